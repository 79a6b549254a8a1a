"""The checkout the tests run from (its README, Dockerfile, examples/ and deploy/ files).
Code under test never reads it: procqueue.resources finds the SQL in any install."""

from __future__ import annotations

from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[2]
