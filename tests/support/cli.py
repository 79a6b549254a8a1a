"""Running the real `procqueue` command as a child process, as an operator or a
script does, and reading what it printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

TIMEOUT = 60
PROCRASTINATE = str(Path(sys.executable).with_name("procrastinate"))
#: A log line of the CLI's text format ("2026-01-01 10:00:00,000 INFO name: ...").
INFO_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (INFO|DEBUG) ")


def run(
    tmp_path: Path, *command: str, env: dict[str, str], **options: Any
) -> subprocess.CompletedProcess[str]:
    """`procqueue COMMAND...` (or `procrastinate ...` when it starts with that path),
    with only `env` and PATH in the environment."""
    argv = list(command) if command[0] == PROCRASTINATE else [sys.executable, "-m", "procqueue.cli"]
    if command[0] != PROCRASTINATE:
        argv += command
    output = {"stderr": subprocess.PIPE, "stdout": subprocess.PIPE, **options}
    return subprocess.run(
        argv, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}, cwd=tmp_path,
        text=True, timeout=TIMEOUT, **output,
    )  # fmt: skip


def the_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line the command printed on stderr besides INFO start-up logs."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [
        line for line in result.stderr.splitlines() if line.strip() and not INFO_LINE.match(line)
    ]
    assert len(lines) == 1, result.stderr
    return lines[0]
