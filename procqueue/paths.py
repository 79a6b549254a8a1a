"""Where the SQL files live. Migrations and trigger functions sit at the top of
the repository (so `supabase db push` users can read them); procqueue is
installed editable (`pip install -e .`) from that checkout."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
MIGRATIONS_DIR = REPO_DIR / "migrations"
SQL_DIR = REPO_DIR / "sql"
TRIGGERS_DIR = SQL_DIR / "triggers"
QUERIES_FILE = PACKAGE_DIR / "sql" / "queries.sql"
SAMPLE_SCHEMA_FILE = REPO_DIR / "examples" / "sample_schema.sql"
