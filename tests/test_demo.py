"""The quick start's demo runs on whatever servers the machine offers."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from procqueue.local import scratch_database


def test_demo_check_indexes_the_seeded_rows(admin_dsn: str, es_url: str) -> None:
    with scratch_database(admin_dsn, f"pq_demo_{uuid.uuid4().hex[:8]}") as dsn:
        result = subprocess.run(
            [sys.executable, "-m", "procqueue.demo", "--check"],
            capture_output=True,
            text=True,
            timeout=120,
            env={
                **os.environ,
                "DATABASE_URL": dsn,
                "ELASTICSEARCH_URL": es_url,
                "PROCQUEUE_INDEX_PREFIX": f"demo{uuid.uuid4().hex[:6]}_",
            },
        )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "indexed: {'inventory_items': 20, 'listings': 20}" in result.stdout
