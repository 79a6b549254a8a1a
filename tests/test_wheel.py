"""The built wheel is a whole procqueue.

`pip wheel .` must carry the migrations, the trigger SQL and the sample schema, which live
at the top of the repository, and installed alone into a fresh virtualenv outside the
checkout it must migrate a database, sync a listing and report health: what the Docker
image and every `pip install` user get. The new virtualenv sees the test environment's
third-party packages through a .pth file (no download, no build of dependencies) and gets
procqueue itself only from the wheel (`--no-deps`); every command runs with its working
directory outside the checkout and without our environment variables.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from email.parser import Parser
from pathlib import Path
from typing import Any

import psycopg
import pytest
from elasticsearch import Elasticsearch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from procqueue.entities import DEFAULT_ENTITIES
from tests.support.repo import REPO_DIR
from tests.support.supabase import supabase_database

MIGRATIONS = sorted(path.name for path in (REPO_DIR / "migrations").glob("*.sql"))
SQL_FILES = sorted(
    path.relative_to(REPO_DIR / "sql").as_posix() for path in (REPO_DIR / "sql").rglob("*.sql")
)
EXAMPLES = ["entities.toml", "sample_schema.sql", "seed.sql"]
DATA = "procqueue/_data"
LISTING = next(entity for entity in DEFAULT_ENTITIES if entity.name == "listing")
#: Variables the settings read, which must not leak from the test run into the commands.
LEAKY = {
    "DATABASE_URL", "ELASTICSEARCH_URL", "ELASTICSEARCH_API_KEY", "SENTRY_DSN", "ENVIRONMENT",
    "CLOUDINARY_URL", "CLOUDINARY_CLOUD_NAME", "CLOUDINARY_API_KEY", "CLOUDINARY_API_SECRET",
    "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV",
}  # fmt: skip
COMMAND_TIMEOUT = 180.0
SYNC_TIMEOUT = 60.0


def run(
    command: list[str | Path], *, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command; fail the test with its output if it exits non-zero."""
    done = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=COMMAND_TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel .` of the checkout (no build isolation: hatchling is a test dependency)."""
    out = tmp_path_factory.mktemp("wheelhouse")
    run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", out, REPO_DIR],
        cwd=out,
    )  # fmt: skip
    (built,) = out.glob("procqueue-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


@pytest.fixture(scope="module")
def wheel_metadata(wheel: Path) -> list[str]:
    """The wheel's Requires-Dist lines."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(name).decode())
    return metadata.get_all("Requires-Dist") or []


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv outside the checkout with only the wheel installed; the
    dependencies come from the test environment's site-packages (a .pth file)."""
    home = tmp_path_factory.mktemp("wheel-venv") / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", home], cwd=home.parent)
    python = home / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                  cwd=home.parent).stdout.strip()  # fmt: skip
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    # A path a .pth file adds is not a site directory: the test environment's own .pth
    # files (its editable procqueue, which points at the checkout) are not processed.
    Path(purelib, "_test_dependencies.pth").write_text("\n".join(ours) + "\n")
    run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
         "--no-index", wheel],
        cwd=home.parent,
    )  # fmt: skip
    return home


def command_env(venv: Path, **values: str) -> dict[str, str]:
    env = {
        key: value for key, value in os.environ.items()
        if key not in LEAKY and not key.startswith("PROCQUEUE_")
    }  # fmt: skip
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.update(values)
    return env


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working directory of every command: not the checkout, and no .env."""
    return tmp_path_factory.mktemp("elsewhere")


@pytest.fixture(scope="module")
def fresh_database(admin_dsn: str) -> Iterator[str]:
    """A Supabase-like database (tests/support/supabase.py) with nothing of ours in it: no
    sample schema, no migration. Yields the non-superuser owner's DSN."""
    with supabase_database(
        admin_dsn, f"pq_wheel_{uuid.uuid4().hex[:8]}", sample_schema=False
    ) as dsn:
        yield dsn


@pytest.fixture(scope="module")
def env(venv: Path, fresh_database: str, es_url: str) -> dict[str, str]:
    return command_env(
        venv,
        DATABASE_URL=fresh_database,
        ELASTICSEARCH_URL=es_url,
        PROCQUEUE_INDEX_PREFIX=f"w{uuid.uuid4().hex[:8]}_",
        PROCQUEUE_POLLING_INTERVAL="0.5",
        PROCQUEUE_MAINTENANCE_TASKS="false",
    )


@pytest.fixture(scope="module")
def migrated(venv: Path, env: dict[str, str], outside: Path) -> str:
    """`procqueue migrate --sample-schema` from the wheel (what docker-compose runs)."""
    return run([venv / "bin" / "procqueue", "migrate", "--sample-schema"],
               cwd=outside, env=env).stdout  # fmt: skip


def test_wheel_carries_the_sql_and_the_sample_files(wheel_names: set[str]) -> None:
    assert MIGRATIONS and "triggers/entity_sync.sql" in SQL_FILES
    expected = {
        *(f"{DATA}/migrations/{name}" for name in MIGRATIONS),
        *(f"{DATA}/sql/{name}" for name in SQL_FILES),
        *(f"{DATA}/examples/{name}" for name in EXAMPLES),
    }
    assert expected - wheel_names == set()
    # Nothing but the package and its metadata; no tests, no checkout files.
    outside_package = {
        name for name in wheel_names
        if not name.startswith("procqueue/") and ".dist-info/" not in name
    }  # fmt: skip
    assert outside_package == set()


def test_wheel_carries_every_file_of_the_package(wheel_names: set[str]) -> None:
    """Templates, static files and queries.sql ship with the code."""
    package = REPO_DIR / "procqueue"
    files = {
        path.relative_to(REPO_DIR).as_posix()
        for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    assert {
        "procqueue/queue/queries.sql",
        "procqueue/search/queries.sql",
        "procqueue/sql/demo.sql",
        "procqueue/dashboard/static/dashboard.css",
    } <= files
    assert files - wheel_names == set()


#: An import statement (`import a, b.c as d` or `from a.b import ...`, not relative),
#: at any indentation. Read as text, not with `ast`: CPython 3.11's parser can fail
#: with "AST constructor recursion depth mismatch" under pytest-asyncio.
IMPORT_LINE = re.compile(
    r"^[ \t]*(?:import[ \t]+([\w.][\w., \t]*)|from[ \t]+(\w[\w.]*)[ \t]+import\b)",
    re.MULTILINE,
)


def test_wheel_declares_what_procqueue_imports(wheel_metadata: list[str]) -> None:
    """Every third-party module our code imports comes from a declared requirement (or an
    extra of one), and no requirement names an extra its package does not have."""
    requirements = [Requirement(line) for line in wheel_metadata]
    declared = {canonicalize_name(requirement.name) for requirement in requirements}
    for requirement in requirements:
        if canonicalize_name(requirement.name) == "procqueue":
            continue
        provided = importlib.metadata.metadata(requirement.name).get_all("Provides-Extra") or []
        missing = {canonicalize_name(extra) for extra in requirement.extras} - {
            canonicalize_name(extra) for extra in provided
        }
        assert not missing, f"{requirement} names extras {requirement.name} lacks: {missing}"
        for extra in requirement.extras:  # psycopg[pool] brings psycopg-pool
            for line in importlib.metadata.requires(requirement.name) or []:
                brought = Requirement(line)
                if brought.marker and brought.marker.evaluate({"extra": extra}):
                    declared.add(canonicalize_name(brought.name))
    distributions = importlib.metadata.packages_distributions()
    undeclared = {}
    for path in (REPO_DIR / "procqueue").rglob("*.py"):
        for match in IMPORT_LINE.finditer(path.read_text(encoding="utf-8")):
            imported, package = match.groups()
            names = [package] if imported is None else imported.split(",")
            modules = [name.split()[0] for name in names if name.strip()]
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top == "procqueue":
                    continue
                candidates = {canonicalize_name(d) for d in distributions.get(top, [top])}
                if not candidates & declared:
                    undeclared[top] = path.relative_to(REPO_DIR).as_posix()
    assert undeclared == {}, f"imported but not declared in pyproject.toml: {undeclared}"


def test_procqueue_comes_from_the_wheel(venv: Path, outside: Path) -> None:
    """procqueue and its SQL resolve inside the new virtualenv, not in the checkout."""
    script = (
        "import procqueue, procqueue.resources as r\n"
        "print(procqueue.__file__)\n"
        "for found in (r.migrations(), r.sql(), r.triggers(), r.sample_schema()):\n"
        "    print(found)\n"
    )
    lines = run([venv / "bin" / "python", "-c", script], cwd=outside,
                env=command_env(venv)).stdout.split()  # fmt: skip
    assert len(lines) == 5
    for line in lines:
        assert Path(line).resolve().is_relative_to(venv.resolve()), lines
        assert not Path(line).resolve().is_relative_to(REPO_DIR), lines


def test_editable_install_reads_the_checkout() -> None:
    """The other way procqueue.resources finds the SQL: in the editable install the tests
    run from, the checkout's own top-level folders (a new migration needs no reinstall)."""
    import procqueue
    from procqueue import resources

    if not Path(procqueue.__file__).resolve().is_relative_to(REPO_DIR):
        pytest.skip("procqueue is not installed editable from this checkout")
    assert resources.migrations() == REPO_DIR / "migrations"
    assert resources.triggers() == REPO_DIR / "sql" / "triggers"
    assert resources.sample_schema() == REPO_DIR / "examples" / "sample_schema.sql"


def test_migrate_from_the_wheel_applies_every_migration(
    migrated: str, fresh_database: str, venv: Path, env: dict[str, str], outside: Path
) -> None:
    assert migrated.startswith("applied: ")
    assert all(name in migrated for name in MIGRATIONS), migrated
    with psycopg.connect(fresh_database) as conn:
        recorded = [row[0] for row in conn.execute(
            "SELECT name FROM procqueue.schema_migrations WHERE name ~ '^[0-9]{4}_' ORDER BY 1"
        )]  # fmt: skip
        triggers = {row[0] for row in conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'public.listings'::regclass"
        )}  # fmt: skip
    assert recorded == MIGRATIONS
    assert {"procqueue_sync", "procqueue_sync_update", "procqueue_sync_delete"} <= triggers
    again = run([venv / "bin" / "procqueue", "migrate"], cwd=outside, env=env).stdout
    assert again.startswith("applied: nothing new"), again


def test_worker_from_the_wheel_syncs_a_listing(
    migrated: str, fresh_database: str, venv: Path, env: dict[str, str], outside: Path,
    es_url: str,
) -> None:  # fmt: skip
    listing_id = str(uuid.uuid4())
    title = f"wheel listing {listing_id[:8]}"
    log_path = outside / "worker.log"
    with log_path.open("w") as log:
        worker = subprocess.Popen(
            [str(venv / "bin" / "procqueue"), "worker", "--name", "wheel"],
            cwd=outside, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        with psycopg.connect(fresh_database) as conn:
            conn.execute(
                "INSERT INTO public.listings (id, title, status) VALUES (%s, %s, 'active')",
                [listing_id, title],
            )
        found = indexed(es_url, f"{env['PROCQUEUE_INDEX_PREFIX']}{LISTING.index}", listing_id,
                        alive=lambda: worker.poll() is None, log=log_path)  # fmt: skip
        assert found["title"] == title
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
            pytest.fail(f"the worker did not stop on SIGTERM:\n{log_path.read_text()}")
    assert worker.returncode == 0, log_path.read_text()


def indexed(
    es_url: str, alias: str, doc_id: str, *, alive: Callable[[], bool], log: Path
) -> dict[str, Any]:
    """The document, once it is in the index (a realtime GET: no refresh needed)."""
    client = Elasticsearch(es_url)
    try:
        deadline = time.monotonic() + SYNC_TIMEOUT
        while True:
            assert alive(), f"the worker exited:\n{log.read_text()}"
            found = client.options(ignore_status=404).get(index=alias, id=doc_id)
            if found.get("found"):
                source: dict[str, Any] = found["_source"]
                return source
            assert time.monotonic() < deadline, (
                f"{doc_id} not in {alias} within {SYNC_TIMEOUT} s:\n{log.read_text()}"
            )
            time.sleep(0.2)
    finally:
        client.close()


def test_health_from_the_wheel(
    migrated: str, venv: Path, env: dict[str, str], outside: Path
) -> None:
    done = subprocess.run(
        [str(venv / "bin" / "procqueue"), "health"], cwd=outside, env=env,
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode in (0, 1, 2), done.stdout + done.stderr
    assert "Queues" in done.stdout and "Traceback" not in done.stderr, done.stdout + done.stderr
