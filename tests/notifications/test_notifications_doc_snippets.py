"""docs/notifications.md's SQL and Python blocks run as written, in the page's order,
against a migrated Supabase-like database: the rules change, and both ways of
notifying without a row enqueue one job per channel of the (changed) rule."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg

from tests.support.repo import REPO_DIR

PAGE = REPO_DIR / "docs" / "notifications.md"
#: The user the page's snippets notify.
USER_ID = "8d0e5b4e-3f4a-4c55-9a51-0b6f3c2d1e7a"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", PAGE.read_text(), re.M | re.S)


def test_the_pages_snippets_run_as_written(database: str, tmp_path: Path) -> None:
    sql, python = blocks("sql"), blocks("python")
    assert len(sql) == 2 and len(python) == 1
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO auth.users (id, email) VALUES (%s, 'buyer@example.com')", [USER_ID]
        )
        for block in sql:
            conn.execute(block.encode())
    script = tmp_path / "notify.py"
    script.write_text(python[0])
    ran = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60,
        env={**os.environ, "DATABASE_URL": database},
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    from_python = ran.stdout.strip()
    with psycopg.connect(database) as conn:
        rows = conn.execute(
            "SELECT args->>'notification_id', task_name FROM procrastinate.procrastinate_jobs "
            "WHERE task_name LIKE 'notification:%' ORDER BY id"
        ).fetchall()
    notifications = {notification for notification, _ in rows}
    assert from_python in notifications and len(notifications) == 2
    # NEW_OFFER's rule is now email and push (the page's UPDATE): two jobs each.
    tasks = sorted(task for _, task in rows)
    assert tasks == ["notification:email"] * 2 + ["notification:push"] * 2
