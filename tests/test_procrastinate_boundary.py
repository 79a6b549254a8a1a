"""Where procqueue leans on Procrastinate beyond its stable API, checked against the
installed Procrastinate, without a database.

procqueue subclasses Procrastinate's Worker, App, connectors and retry strategy,
overrides private methods, reads private attributes, rewrites Procrastinate's queries
to schema-qualified names (procqueue/engine/qualified.py), and calls or mirrors
Procrastinate's SQL functions from its own SQL. All of it was written against one
release (WRITTEN_AGAINST); a newer one may rename, reshape or change any of it
without notice, and nothing else would fail until a worker met it in production.

Every test here fails naming the symbol that moved. docs/procrastinate.md says why
each override exists and which upstream issue would let it go. To upgrade
Procrastinate: bump its pin in pyproject.toml, run this file, and for each failure
re-read Procrastinate's new code for the named symbol, fix (or drop) procqueue's
code that relies on it, then update the recorded value below and the docs.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import inspect
import pkgutil
import re
import textwrap
import tomllib
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

import procrastinate
import procrastinate.worker
import psycopg_pool
import pytest
from packaging.requirements import Requirement  # a dependency of Procrastinate's
from procrastinate import job_context, middleware, schema, sql, testing

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "procrastinate.md"

#: The Procrastinate release every value recorded below was read from.
WRITTEN_AGAINST = "3.10.0"

#: The newest schema migration that release ships (procrastinate/sql/migrations).
NEWEST_MIGRATION = "03.04.00_50_post_add_retry_failed_job_procedure.sql"

#: Procrastinate's classes procqueue subclasses, by the name the lists below use.
BASES: dict[str, type[Any]] = {
    "Worker": procrastinate.worker.Worker,
    "App": procrastinate.App,
    "PsycopgConnector": procrastinate.PsycopgConnector,
    "SyncPsycopgConnector": procrastinate.SyncPsycopgConnector,
    "BaseRetryStrategy": procrastinate.BaseRetryStrategy,
}

#: Every Procrastinate method procqueue overrides, reviewed: "Base.name" -> checksum of
#: Procrastinate's own code for it (sha256[:16] of its dedented source). A changed
#: checksum means upstream changed what the override replaces or wraps: re-read it.
#: Each key is explained in docs/procrastinate.md.
OVERRIDDEN: dict[str, str] = {
    "Worker._start_side_tasks": "19274ee46774617c",
    "Worker._monitor_side_tasks": "b728883eb7c823c2",
    "Worker._update_heartbeat": "a86faef3ab683a19",
    "Worker._handle_notification": "1cdd4f2f9e26a205",
    "Worker._fetch_and_process_jobs": "61ce06fd0fe2120a",
    "Worker._process_job": "35d5da56aea6cff5",
    "Worker._log_job_outcome": "9554cedff89b4a78",
    "Worker._persist_job_status": "8d53fd9c1738b7c5",
    "Worker._shutdown": "6fde710b5f1c3dda",
    "App._worker": "af85921838f861b8",
    "App.run_worker_async": "d210ddd9ccbf7cbc",
    "PsycopgConnector.get_sync_connector": "cc843629e5fa07fa",
    "PsycopgConnector.execute_query_async": "efbf3628462154ab",
    "PsycopgConnector.execute_query_one_async": "8f37dbac68a99181",
    "PsycopgConnector.execute_query_all_async": "1bc7364d21e99a63",
    "PsycopgConnector.execute_query_one_async_with_connection": "6372ea4a59d3d366",
    "PsycopgConnector.execute_query_all_async_with_connection": "89598830dd22a13a",
    "SyncPsycopgConnector.execute_query": "d033829f37f0a4c8",
    "SyncPsycopgConnector.execute_query_one": "b3b8b97f5d28105a",
    "SyncPsycopgConnector.execute_query_all": "b40c3bfa631e3a1a",
    "SyncPsycopgConnector.execute_query_one_with_connection": "271f8ecdf5902c91",
    "SyncPsycopgConnector.execute_query_all_with_connection": "6fc41520eb856d49",
    "BaseRetryStrategy.get_retry_decision": "20d9cfcd98320797",
}

#: What procqueue's subclasses use of their Procrastinate base without defining it
#: (attributes read or written, methods called), reviewed: name -> the parameters
#: procqueue calls it with, or None for an attribute.
INHERITED: dict[str, dict[str, tuple[str, ...] | None]] = {
    "Worker": {
        # Private: the worker's running state, read and changed by procqueue's overrides.
        "_running_jobs": None,
        "_new_job_event": None,
        "_stop_event": None,
        "_job_ids_to_abort": None,
        # Private: the concurrency slots, taken by procqueue's fetch loop.
        "_job_semaphore": None,
        # Private: side tasks and abort handling procqueue runs as they are.
        "_periodic_deferrer": (),
        "_poll_jobs_to_abort": (),
        "_handle_abort_jobs_requested": ("job_ids",),
        "_abort_job": ("process_job_task", "context", "reason"),
        # Public: its options and identity.
        "app": None,
        "queues": None,
        "worker_name": None,
        "worker_id": None,
        "additional_context": None,
        "delete_jobs": None,
        "listen_notify": None,
        "concurrency": None,  # procqueue.worker_details records it (migration 0022)
        "fetch_job_polling_interval": None,
        "update_heartbeat_interval": None,
        "stalled_worker_timeout": None,
        "shutdown_graceful_timeout": None,
        "stop": (),
    },
    "App": {
        "connector": None,
        "worker_defaults": None,
        "perform_import_paths": (),
        "task": ("name", "queue", "retry"),
    },
    "PsycopgConnector": {
        # Private: what get_sync_connector needs to build the qualifying sync connector.
        "_async_pool": None,
        "_sync_connector": None,
        "_pool_args": None,
        "_json_dumps": None,
        "_json_loads": None,
    },
    "SyncPsycopgConnector": {},
    "BaseRetryStrategy": {},
}

#: Procrastinate's queries (procrastinate/sql/queries.sql), name -> sha256[:16] of the
#: text: procqueue runs each one rewritten (engine/qualified.py), and its own SQL
#: mirrors some of them (procqueue/*/queries.sql).
QUERY_CHECKSUMS: dict[str, str] = {
    "defer_jobs": "9866d38e43591598",
    "defer_periodic_job": "ea6b04988ac3313a",
    "fetch_job": "cdfaf364035990e2",
    "select_stalled_jobs_by_started": "f915b7b120c183a8",
    "select_stalled_jobs_by_heartbeat": "5ed3078a15a498d3",
    "delete_old_jobs": "c41e060c16f86806",
    "finish_job": "46012253eb4695e3",
    "cancel_job": "ef28571fbeed0a0e",
    "get_job_status": "30cbd8bf3791be0a",
    "retry_job": "8e4ad4efcf834ca4",
    "listen_queue": "726d96acb4477b65",
    "check_connection": "577b1550697e06a5",
    "count_jobs_status": "97dd9cdc868b6587",
    "list_jobs": "d8fa0c0e347b3969",
    "list_queues": "f9663f9479187dfe",
    "list_tasks": "1e2eb53a9a9cec38",
    "list_locks": "1030fb4aff39d275",
    "list_jobs_to_abort": "b414dbd1ebe83854",
    "register_worker": "c1f586449d9ef547",
    "unregister_worker": "5d457810260df811",
    "update_heartbeat": "20072135a408e084",
    "prune_stalled_workers": "20ea599ae729f744",
}

#: Public Procrastinate names procqueue calls whose exact shape it relies on:
#: dotted path -> the parameters procqueue passes (None: only its existence).
PUBLIC_API: dict[str, tuple[str, ...] | None] = {
    # JobManager: saving outcomes, the stalled-job rescue, (re-)registration, aborts.
    "procrastinate.manager.JobManager.finish_job": ("job", "status", "delete_job"),
    "procrastinate.manager.JobManager.retry_job": ("job", "retry_at", "lock", "priority", "queue"),
    "procrastinate.manager.JobManager.get_stalled_jobs": ("seconds_since_heartbeat",),
    "procrastinate.manager.JobManager.prune_stalled_workers": ("seconds_since_heartbeat",),
    "procrastinate.manager.JobManager.register_worker": (),
    "procrastinate.manager.JobManager.unregister_worker": ("worker_id",),
    "procrastinate.manager.JobManager.list_jobs_to_abort_async": (),
    # The worker's own listener LISTENs on Procrastinate's channels.
    "procrastinate.manager.get_channel_for_queues": ("queues",),
    "procrastinate.utils.wait_any": ("coros_or_futures",),
    "procrastinate.utils.cancel_and_capture_errors": ("tasks",),
    "procrastinate.utils.queues_display": ("queues",),
    # Jobs a batch leader claims are run with a context built as Procrastinate builds it.
    "procrastinate.job_context.JobContext": (
        "app", "worker_name", "worker_queues", "additional_context", "job", "abort_reason",
        "start_timestamp",
    ),
    "procrastinate.job_context.JobResult": None,
    "procrastinate.jobs.Job.from_row": ("row",),
    # The fields of a Job procqueue reads.
    "procrastinate.jobs.Job": (
        "id", "status", "queue", "priority", "lock", "queueing_lock", "task_name",
        "task_kwargs", "attempts", "worker_id",
    ),
    "procrastinate.jobs.Status.SUCCEEDED": None,
    "procrastinate.jobs.Status.FAILED": None,
    "procrastinate.jobs.DeleteJobCondition.ALWAYS": None,
    "procrastinate.jobs.DeleteJobCondition.NEVER": None,
    "procrastinate.jobs.DeleteJobCondition.SUCCESSFUL": None,
    "procrastinate.retry.RetryDecision": ("retry_at", "lock", "priority", "queue"),
    "procrastinate.retry.BaseRetryStrategy.get_retry_decision": ("exception", "job"),
    "procrastinate.tasks.Task.get_retry_exception": ("exception", "job"),
    # The fields of a Task the worker's refusals read.
    "procrastinate.tasks.Task": ("func", "blueprint", "name", "pass_context", "queue"),
    "procrastinate.app.App": ("connector",),
    "procrastinate.app.App.perform_import_paths": (),
    "procrastinate.app.App.open_async": (),
    "procrastinate.app.App.task": (
        "name", "queue", "retry", "pass_context", "priority", "queueing_lock",
    ),
    "procrastinate.app.App.periodic": ("cron", "periodic_id"),
    "procrastinate.app.WorkerOptions": None,
    # Worker options procqueue sets (app.py worker_options, `procqueue worker`, the demo).
    "procrastinate.worker.Worker": (
        "app", "queues", "name", "concurrency", "wait", "fetch_job_polling_interval",
        "listen_notify", "install_signal_handlers", "update_heartbeat_interval",
        "stalled_worker_timeout", "worker_middleware",
    ),
    "procrastinate.psycopg_connector.PsycopgConnector": ("pool_factory",),
    "procrastinate.psycopg_connector.PsycopgConnector.pool": None,
    "procrastinate.sync_psycopg_connector.SyncPsycopgConnector": ("json_dumps", "json_loads"),
    "procrastinate.exceptions.ConnectorException": None,
    # `procqueue migrate` installs the schema and the migrations itself (migrate.py).
    "procrastinate.schema.SchemaManager.get_schema": (),
    "procrastinate.sql.queries": None,
}  # fmt: skip

#: The Procrastinate tables, types and functions procqueue's own SQL names
#: (procqueue/*/queries.sql, migrations/, sql/), reviewed.
SQL_NAMES: frozenset[str] = frozenset(
    {
        "procrastinate_jobs",
        "procrastinate_events",
        "procrastinate_workers",
        "procrastinate_job_status",
        "procrastinate_job_event_type",
        "procrastinate_cancel_job_v1",
        "procrastinate_finish_job_v1",
        "procrastinate_update_heartbeat_v1",
        # Its job_id has no ON DELETE: `procqueue delete` unlinks a job there first.
        "procrastinate_periodic_defers",
        # Named in comments of queries that mirror or avoid them.
        "procrastinate_fetch_job_v2",
        "procrastinate_retry_job_v2",
    }
)

#: Procrastinate SQL functions procqueue calls, or whose rules its SQL mirrors:
#: name -> sha256[:16] of the function's definition in Procrastinate's schema.
SQL_FUNCTIONS: dict[str, str] = {
    # fetch_jobs (engine/worker.py) and claim_jobs_like (queue/batch.py) take jobs by its rules
    "procrastinate_fetch_job_v2": "3e879f743df39d55",
    # finish_jobs calls it once per job (queue/finishing.py)
    "procrastinate_finish_job_v1": "6ad2989990c1c472",
    # JobManager.retry_job; migration 0008's trigger fires on its UPDATE
    "procrastinate_retry_job_v2": "fa09b225a9ab980f",
    # cancel_job, cancel_waiting_job (dashboard, CLI)
    "procrastinate_cancel_job_v1": "c0bc2bdfff03acee",
    # worker_heartbeat (engine/worker.py)
    "procrastinate_update_heartbeat_v1": "7efb2ca88955294e",
    # postpone_job (migration 0018) deletes the event it writes
    "procrastinate_trigger_function_status_events_update_v1": "e8f56523813cd5d5",
}

#: The columns of Procrastinate's tables procqueue's SQL reads or writes.
SQL_COLUMNS: dict[str, frozenset[str]] = {
    "procrastinate_jobs": frozenset(
        {
            "id", "queue_name", "task_name", "priority", "lock", "queueing_lock", "args",
            "status", "scheduled_at", "attempts", "abort_requested", "worker_id",
        }
    ),
    "procrastinate_events": frozenset({"id", "job_id", "type", "at"}),
    "procrastinate_workers": frozenset({"id", "last_heartbeat"}),
}  # fmt: skip

#: The enum labels procqueue's SQL compares with: type -> labels.
SQL_LABELS: dict[str, frozenset[str]] = {
    "procrastinate_job_status": frozenset(
        {"todo", "doing", "succeeded", "failed", "cancelled", "aborted"}
    ),
    "procrastinate_job_event_type": frozenset(
        {"deferred", "started", "deferred_for_retry", "succeeded", "failed", "cancelled", "aborted"}
    ),
}

#: Texts of Procrastinate's errors procqueue tells apart (engine/outages.py), and the
#: schema fragment that produces each.
ERROR_TEXTS: dict[str, str] = {
    # job_not_ours: finish/retry refused, the job is no longer `doing` (rescued meanwhile).
    "a job that is no longer this worker's": 'Job was not found or not in "doing" status',
    # worker_gone: the fetch's worker_id no longer names a worker row (pruned as dead).
    "a worker taken for dead": "worker_id bigint REFERENCES procrastinate_workers(id)",
}


# Helpers -----------------------------------------------------------------------


def checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.cache
def procqueue_modules() -> tuple[ModuleType, ...]:
    """Every module of the procqueue package, imported (an import error fails)."""
    package = importlib.import_module("procqueue")
    names = sorted(info.name for info in pkgutil.walk_packages(package.__path__, "procqueue."))
    return (package, *(importlib.import_module(name) for name in names))


def is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def is_procqueue(cls: type[Any]) -> bool:
    return cls.__module__.split(".")[0] == "procqueue"


@functools.cache
def subclasses() -> tuple[tuple[str, type[Any]], ...]:
    """(base name, class) for each procqueue class that extends one of BASES, found
    by walking the package: the worker's module layout may change freely."""
    found: dict[tuple[str, type[Any]], None] = {}
    for module in procqueue_modules():
        for value in vars(module).values():
            if not (isinstance(value, type) and value.__module__ == module.__name__):
                continue
            for base_name, base in BASES.items():
                if issubclass(value, base) and value is not base:
                    found[(base_name, value)] = None
    return tuple(found)


def subclasses_of(base_name: str) -> list[type[Any]]:
    return [cls for name, cls in subclasses() if name == base_name]


def own_classes(cls: type[Any]) -> list[type[Any]]:
    """The procqueue classes in `cls`'s MRO: itself and any mixins it is made of."""
    return [klass for klass in cls.__mro__ if is_procqueue(klass)]


def own_names(cls: type[Any]) -> set[str]:
    """Names procqueue's classes define (methods, properties, class attributes and
    annotated attributes), dunders aside."""
    names: set[str] = set()
    for klass in own_classes(cls):
        names.update(vars(klass))
        names.update(vars(klass).get("__annotations__", {}))
    return {name for name in names if not is_dunder(name)}


def own_source(cls: type[Any]) -> str:
    return "\n".join(inspect.getsource(klass) for klass in own_classes(cls))


@functools.cache
def base_instance(base_name: str) -> Any:
    """An instance of Procrastinate's class (its instance attributes are set in
    __init__), built without a database."""
    app = procrastinate.App(connector=testing.InMemoryConnector())
    make: dict[str, Callable[[], Any]] = {
        "Worker": lambda: procrastinate.worker.Worker(app=app),
        "App": lambda: app,
        "PsycopgConnector": procrastinate.PsycopgConnector,
        "SyncPsycopgConnector": procrastinate.SyncPsycopgConnector,
        "BaseRetryStrategy": procrastinate.BaseRetryStrategy,
    }
    return make[base_name]()


def base_names(base_name: str) -> set[str]:
    return {name for name in dir(base_instance(base_name)) if not is_dunder(name)}


def overrides(base_name: str, cls: type[Any]) -> set[str]:
    """Names procqueue's `cls` defines that Procrastinate's base also has."""
    return own_names(cls) & base_names(base_name)


def callable_of(member: Any) -> Callable[..., Any] | None:
    """The function behind a class member (a property's getter), or None."""
    if isinstance(member, property):
        return member.fget
    if isinstance(member, staticmethod | classmethod):
        return member.__func__
    return member if callable(member) else None


def parameter_names(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


def upstream_source(base_name: str, name: str) -> str:
    """Procrastinate's code for `Base.name`, dedented ('' for a plain attribute)."""
    function = callable_of(inspect.getattr_static(BASES[base_name], name, None))
    if function is None:
        return ""
    return textwrap.dedent(inspect.getsource(function))


def check_parameters(label: str, function: Callable[..., Any], passed: tuple[str, ...]) -> None:
    """`function` takes every parameter procqueue passes, and needs no other."""
    parameters = inspect.signature(function).parameters
    missing = [name for name in passed if name not in parameters]
    required = [
        name
        for name, parameter in parameters.items()
        if parameter.default is inspect.Parameter.empty
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        and name not in ("self", "cls")
        and name not in passed
    ]
    assert not missing and not required, (
        f"{label} now takes ({', '.join(parameters)}); procqueue passes "
        f"({', '.join(passed)}): no parameter {missing} / new required {required}. Re-read "
        f"it in Procrastinate {procrastinate.__version__} and fix procqueue's calls, then "
        f"this test's record (see {DOCS.name})"
    )


_SELF_ATTRIBUTE = re.compile(r"\bself\.([A-Za-z_]\w*)")
_SELF_ASSIGNED = re.compile(r"\bself\.([A-Za-z_]\w*)\s*(?::[^=\n]+)?=(?!=)")
_WORKER_PRIVATE = re.compile(r"\bworker\.(_[A-Za-z]\w*)")


def used_from_base(base_name: str, cls: type[Any]) -> set[str]:
    """What `cls`'s code uses of `self` that procqueue does not define: taken from
    Procrastinate's base. An attribute procqueue assigns and the base lacks is its
    own; one the base also has is the base's (or a clash of names)."""
    source = own_source(cls)
    if base_name == "Worker":
        # Helpers outside the class (engine/*.py) that reach into a worker.
        source += "\n" + "\n".join(
            f"self.{name}"
            for module in procqueue_modules()
            for name in _WORKER_PRIVATE.findall(inspect.getsource(module))
        )
    used = {name for name in _SELF_ATTRIBUTE.findall(source) if not is_dunder(name)}
    assigned = set(_SELF_ASSIGNED.findall(source))
    return used - own_names(cls) - (assigned - base_names(base_name))


def resolve(dotted: str) -> Any:
    """The object a dotted path names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            value: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for part in parts[split:]:
            value = getattr(value, part)
        return value
    raise ImportError(dotted)


def parse(source: str) -> ast.Module:
    """`ast.parse`, tried again on CPython 3.11's spurious "AST constructor recursion
    depth mismatch" SystemError (seen under pytest-asyncio: tests/test_layout.py)."""
    for _ in range(2):
        try:
            return ast.parse(source)
        except SystemError:
            continue
    return ast.parse(source)


def procrastinate_references(module: ModuleType) -> Iterator[tuple[str, int]]:
    """(dotted path, line) of every Procrastinate name `module`'s code reaches:
    `procrastinate_utils.wait_any`, `Status.FAILED`, `procrastinate.app.WorkerOptions`..."""
    tree = parse(inspect.getsource(module))
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "procrastinate":
                    local = alias.asname or "procrastinate"
                    aliases[local] = alias.name if alias.asname else "procrastinate"
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("procrastinate"):
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                yield f"{node.module}.{alias.name}", node.lineno
    inner = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
    }
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or id(node) in inner:
            continue
        chain: list[str] = []
        current: ast.expr = node
        while isinstance(current, ast.Attribute):
            chain.append(current.attr)
            current = current.value
        if isinstance(current, ast.Name) and current.id in aliases:
            yield ".".join([aliases[current.id], *reversed(chain)]), node.lineno


@functools.cache
def schema_sql() -> str:
    return schema.SchemaManager.get_schema()


def schema_definitions() -> set[str]:
    """The names Procrastinate's schema creates."""
    return set(
        re.findall(
            r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:UNLOGGED\s+)?"
            r"(?:FUNCTION|TABLE|TYPE|PROCEDURE|VIEW|TRIGGER|(?:UNIQUE\s+)?INDEX)\s+"
            r"(?:IF\s+NOT\s+EXISTS\s+)?(procrastinate_\w+)",
            schema_sql(),
        )
    )


def function_definition(name: str) -> str:
    """`CREATE FUNCTION name(...) ... $$ body $$;` from Procrastinate's schema."""
    start = schema_sql().find(f"CREATE FUNCTION {name}(")
    assert start >= 0, f"Procrastinate's schema no longer defines function {name}"
    opening = schema_sql().index("$$", start)
    closing = schema_sql().index("$$", opening + 2)
    return schema_sql()[start : closing + 2]


def table_columns(table: str) -> set[str]:
    found = re.search(rf"CREATE TABLE {table}\s*\((.*?)\n\);", schema_sql(), re.DOTALL)
    assert found, f"Procrastinate's schema no longer creates table {table}"
    columns = set()
    for line in found.group(1).splitlines():
        word = line.strip().split(" ", 1)[0]
        if word and word.upper() not in ("CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "--"):
            columns.add(word)
    return columns


def enum_labels(type_name: str) -> set[str]:
    found = re.search(rf"CREATE TYPE {type_name} AS ENUM \((.*?)\);", schema_sql(), re.DOTALL)
    assert found, f"Procrastinate's schema no longer creates enum {type_name}"
    return set(re.findall(r"'(\w+)'", found.group(1)))


def procqueue_sql_files() -> list[Path]:
    return sorted(
        [
            *(ROOT / "procqueue").rglob("*.sql"),
            *(ROOT / "migrations").glob("*.sql"),
            *(ROOT / "sql").rglob("*.sql"),
        ]
    )


_LITERALS_AND_COMMENTS = re.compile(
    r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|\$(\w*)\$.*?\$\1\$", re.DOTALL
)


def only_raises(source: str) -> bool:
    """Whether a function's body (its docstring aside) is a lone `raise`."""
    function = parse(source).body[0]
    assert isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
    body = [
        statement
        for statement in function.body
        if not (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant))
    ]
    return len(body) == 1 and isinstance(body[0], ast.Raise)


def qualifier() -> ModuleType:
    """procqueue's query qualifier, wherever it lives now."""
    for name in ("procqueue.engine.qualified", "procqueue.qualified"):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            continue
    raise AssertionError("no procqueue.engine.qualified (nor procqueue.qualified) module")


# a. Overridden methods --------------------------------------------------------


def test_procqueue_subclasses_procrastinate() -> None:
    """The discovery below finds what it is about (else every check would pass)."""
    found = {base_name for base_name, _ in subclasses()}
    assert {"Worker", "App", "PsycopgConnector", "SyncPsycopgConnector"} <= found, found


def test_every_override_is_reviewed() -> None:
    """A name procqueue defines that Procrastinate's base also has is an override
    (or a clash of names): it must be reviewed, listed and documented."""
    for base_name, cls in subclasses():
        for name in sorted(overrides(base_name, cls)):
            assert f"{base_name}.{name}" in OVERRIDDEN, (
                f"{cls.__module__}.{cls.__qualname__}.{name} overrides Procrastinate's "
                f"{base_name}.{name}: if meant, add it to OVERRIDDEN in this file and explain "
                f"it in docs/procrastinate.md; if Procrastinate just added a member of the "
                f"same name, rename procqueue's"
            )


def test_overridden_methods_still_exist_upstream() -> None:
    for key in OVERRIDDEN:
        base_name, name = key.split(".", 1)
        assert name in base_names(base_name), (
            f"Procrastinate {procrastinate.__version__}'s {base_name} has no {name} any more: "
            f"procqueue's override of {key} is never called. Re-read how Procrastinate does "
            "it now, move procqueue's behaviour there (or drop it if upstream fixed it), and "
            "update OVERRIDDEN and docs/procrastinate.md"
        )


def test_overrides_take_the_parameters_procrastinate_passes() -> None:
    """Procrastinate calls our overrides as it calls its own methods: a renamed or
    reshaped parameter would break the call (or silently pass the wrong value)."""
    for base_name, cls in subclasses():
        for name in sorted(overrides(base_name, cls)):
            upstream = callable_of(inspect.getattr_static(BASES[base_name], name, None))
            ours = callable_of(inspect.getattr_static(cls, name))
            if upstream is None or ours is None:
                continue
            assert parameter_names(ours) == parameter_names(upstream), (
                f"Procrastinate's {base_name}.{name} takes {parameter_names(upstream)}, "
                f"procqueue's override in {cls.__module__} takes {parameter_names(ours)}: "
                "re-read the upstream method and reshape the override"
            )


def test_overridden_upstream_code_is_the_reviewed_one() -> None:
    """An override replaces or wraps Procrastinate's code as it was: when that code
    changes (a fix, a new step), the override must be re-read against it, and may be
    dropped when upstream fixed what it works around (docs/procrastinate.md)."""
    changed = {
        key: current
        for key, recorded in OVERRIDDEN.items()
        if (current := checksum(upstream_source(*key.split(".", 1)))) != recorded
    }
    assert not changed, (
        f"Procrastinate {procrastinate.__version__} changed the code procqueue overrides: "
        + "; ".join(f"{key} (now {value!r})" for key, value in changed.items())
        + ". Re-read each against procqueue's override and docs/procrastinate.md, port the "
        "change or drop the override, then record the new checksums in OVERRIDDEN"
    )


def test_each_override_is_documented() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    missing = [key for key in OVERRIDDEN if f"`{key}`" not in docs]
    assert not missing, f"docs/procrastinate.md does not explain the overrides {missing}"


# b. Attributes and methods procqueue uses of Procrastinate's classes ----------


def test_every_inherited_name_is_reviewed() -> None:
    for base_name, cls in subclasses():
        unreviewed = sorted(used_from_base(base_name, cls) - set(INHERITED[base_name]))
        assert not unreviewed, (
            f"{cls.__module__}.{cls.__qualname__} uses self.{unreviewed} from Procrastinate's "
            f"{base_name} (or assigns a name the base also has: a clash, rename ours): add "
            f"each to INHERITED[{base_name!r}] in this file, private ones to "
            "docs/procrastinate.md"
        )


def test_inherited_names_still_exist_upstream() -> None:
    for base_name, names in INHERITED.items():
        instance = base_instance(base_name)
        for name, passed in names.items():
            assert hasattr(instance, name), (
                f"Procrastinate {procrastinate.__version__}'s {base_name} has no {name} any "
                f"more; procqueue's {base_name} subclass uses it: re-read what replaced it "
                "and update procqueue, INHERITED and docs/procrastinate.md"
            )
            if passed is not None:
                check_parameters(
                    f"Procrastinate's {base_name}.{name}", getattr(instance, name), passed
                )


def test_private_inherited_names_are_documented() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    missing = [
        f"{base_name}.{name}"
        for base_name, names in INHERITED.items()
        for name in names
        if name.startswith("_") and f"`{name}`" not in docs
    ]
    assert not missing, f"docs/procrastinate.md does not mention {missing}"


# c. Queries procqueue rewrites ------------------------------------------------


def test_procrastinate_queries_are_the_reviewed_ones() -> None:
    installed = {name: checksum(text) for name, text in sql.queries.items()}
    added = sorted(set(installed) - set(QUERY_CHECKSUMS))
    removed = sorted(set(QUERY_CHECKSUMS) - set(installed))
    assert not added and not removed, (
        f"Procrastinate {procrastinate.__version__} added queries {added} / removed {removed}: "
        "check that procqueue's qualifier rewrites the new ones (test below) and that no "
        "procqueue SQL mirrors a removed one, then update QUERY_CHECKSUMS"
    )
    for name, recorded in QUERY_CHECKSUMS.items():
        assert installed[name] == recorded, (
            f"Procrastinate's query {name!r} changed (checksum now {installed[name]!r}): "
            "re-read it in procrastinate/sql/queries.sql, check procqueue's SQL that calls or "
            "mirrors it (procqueue/*/queries.sql: claim_jobs_like, finish_jobs, "
            "worker_heartbeat, reclaim_worker_jobs...), then update QUERY_CHECKSUMS"
        )


def test_every_procrastinate_query_runs_schema_qualified() -> None:
    """The connector rewrites each query once, at import: every procrastinate_* name
    outside string literals gets its schema, and names only what the schema has."""
    module = qualifier()
    qualified: dict[str, str] = module.QUALIFIED
    qualify: Callable[[str], str] = module.qualify
    assert set(qualified) == set(sql.queries.values()), (
        "QUALIFIED does not hold exactly Procrastinate's queries"
    )
    defined = schema_definitions()
    for name, text in sql.queries.items():
        rewritten = qualify(text)
        assert qualified[text] == rewritten, name
        code = _LITERALS_AND_COMMENTS.sub(" ", rewritten)
        bare = re.findall(r"(?<![\w.])(?<!%\()procrastinate_[a-z0-9_]+", code)
        assert not bare, f"query {name!r} still names {bare} without their schema: {rewritten}"
        unknown = set(re.findall(r"\bprocrastinate\.(procrastinate_\w+)", rewritten)) - defined
        assert not unknown, f"query {name!r} names {unknown}, which the schema does not create"


def test_every_query_method_of_the_connectors_is_qualified() -> None:
    """A query-running method the qualifying connectors do not wrap would run a query
    unqualified (there is no search_path to fall back on): each must be wrapped, or
    delegate to a wrapped one, or do nothing but raise (not implemented there)."""
    for base_name in ("PsycopgConnector", "SyncPsycopgConnector"):
        for cls in subclasses_of(base_name):
            wrapped = own_names(cls)
            for name in sorted(n for n in dir(BASES[base_name]) if n.startswith("execute_")):
                if name in wrapped:
                    continue
                source = upstream_source(base_name, name)
                targets = set(re.findall(r"\bself\.(execute_\w+)", source))
                assert (targets and targets <= wrapped) or only_raises(source), (
                    f"Procrastinate's {base_name}.{name} runs queries, and procqueue's "
                    f"{cls.__module__}.{cls.__qualname__} does not qualify them: wrap it "
                    "(and add it to OVERRIDDEN)"
                )


# d. Versions --------------------------------------------------------------------


def test_installed_procrastinate_is_the_pinned_one() -> None:
    """CI runs the version the pin allows, and the recorded values were read from a
    version it allows."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    pins = [
        dependency
        for dependency in project["project"]["dependencies"]
        if re.match(r"procrastinate\b(?!-)", dependency)
    ]
    assert len(pins) == 1, f"pyproject.toml pins procrastinate {len(pins)} times: {pins}"
    for version in (procrastinate.__version__, WRITTEN_AGAINST):
        assert Requirement(pins[0]).specifier.contains(version, prereleases=True), (
            f"procrastinate {version} is outside the pin {pins[0]!r} in pyproject.toml"
        )


def test_procrastinate_schema_version_is_the_recorded_one() -> None:
    """`procqueue migrate` applies Procrastinate's migrations inside schema
    procrastinate: a new one must be read before it runs there."""
    migrations = resources.files("procrastinate.sql") / "migrations"
    names = sorted(item.name for item in migrations.iterdir() if item.name.endswith(".sql"))
    assert names and names[-1] == NEWEST_MIGRATION, (
        f"Procrastinate {procrastinate.__version__} ships schema migrations up to "
        f"{names[-1] if names else None}, not {NEWEST_MIGRATION}: read the new ones (tables "
        "and functions procqueue's SQL uses, any name qualified with `public.`), run "
        "tests/test_migrate.py, then update NEWEST_MIGRATION"
    )


def test_procrastinate_sql_names_no_public_schema() -> None:
    """procqueue installs Procrastinate's schema and migrations under
    `SET LOCAL search_path TO procrastinate`: a name qualified with `public.` would
    land outside it (upstream once had one: docs/procrastinate.md)."""
    migrations = resources.files("procrastinate.sql") / "migrations"
    texts = {"schema.sql": schema_sql()} | {
        item.name: item.read_text(encoding="utf-8")
        for item in migrations.iterdir()
        if item.name.endswith(".sql")
    }
    for name, text in texts.items():
        assert not re.search(r"\bpublic\.", text), f"Procrastinate's {name} names `public.`"


# e. Public Procrastinate names procqueue relies on ------------------------------


def test_public_names_procqueue_calls_take_what_it_passes() -> None:
    for dotted, passed in PUBLIC_API.items():
        try:
            value = resolve(dotted)
        except (ImportError, AttributeError):
            pytest.fail(f"Procrastinate {procrastinate.__version__} has no {dotted} any more")
        if passed is not None:
            function = callable_of(value)
            assert function is not None, f"{dotted} is no longer callable"
            check_parameters(dotted, function, passed)


def test_every_procrastinate_name_procqueue_reaches_exists() -> None:
    """Every attribute chain on a name imported from Procrastinate, in every procqueue
    module, still resolves: a moved or renamed name fails here, not in a worker."""
    missing = []
    for module in procqueue_modules():
        for dotted, line in procrastinate_references(module):
            try:
                resolve(dotted)
            except (ImportError, AttributeError):
                missing.append(f"{module.__name__}:{line} {dotted}")
    assert not missing, f"Procrastinate {procrastinate.__version__} lacks: {missing}"


def test_job_manager_calls_are_reviewed() -> None:
    """procqueue calls JobManager methods Procrastinate's docs do not promise to keep
    (finish_job, retry_job, register_worker...): each one is listed in PUBLIC_API."""
    called = {
        name
        for module in procqueue_modules()
        for name in re.findall(r"\bjob_manager\.(\w+)", inspect.getsource(module))
    }
    unreviewed = sorted(
        name for name in called if f"procrastinate.manager.JobManager.{name}" not in PUBLIC_API
    )
    assert not unreviewed, f"add procrastinate.manager.JobManager.{unreviewed} to PUBLIC_API"


def test_worker_options_procqueue_sets_are_worker_parameters() -> None:
    """procqueue's worker defaults and `procqueue worker` options are App.worker_defaults
    keys: Procrastinate passes them to Worker() unchecked."""
    options = set(procrastinate.app.WorkerOptions.__annotations__)
    worker = PUBLIC_API["procrastinate.worker.Worker"]
    assert worker is not None
    for name in worker:
        if name != "app":
            assert name in options, f"WorkerOptions has no {name!r} any more"


async def test_worker_middleware_is_called_with_call_next_context_and_worker() -> None:
    """procqueue's middlewares (queue/middleware.py) take (call_next, context, worker)
    and return what the job's result is (a Postponed outcome reaches the worker's
    _persist_job_status as job_result.result)."""
    seen: list[tuple[Any, ...]] = []

    async def recording(call_next: Callable[[], Any], context: Any, worker: Any) -> Any:
        seen.append((context, worker))
        return ("wrapped", await call_next())

    async def run() -> str:
        return "ran"

    context, worker = object(), object()
    composed = middleware.compose([recording], run, context, worker)  # type: ignore[arg-type]
    assert await composed() == ("wrapped", "ran")
    assert seen == [(context, worker)]
    assert "result" in inspect.signature(job_context.JobResult).parameters


async def test_the_connector_asks_its_pool_to_check_connections_before_use() -> None:
    """procqueue's pool (engine/connections.py FailFastPool) checks a connection before
    handing it out with the `check` Procrastinate's connector passes to its
    `pool_factory`: psycopg_pool's check_connection. Without it the worker's pool would
    hand out the dead connections a restart leaves."""
    received: dict[str, Any] = {}

    def factory(**kwargs: Any) -> Any:
        received.update(kwargs)
        return object()

    connector = procrastinate.PsycopgConnector(pool_factory=factory, conninfo="")
    await connector._create_pool(connector._pool_args)
    assert received.get("check") is psycopg_pool.AsyncConnectionPool.check_connection, (
        f"Procrastinate {procrastinate.__version__} no longer passes check="
        "AsyncConnectionPool.check_connection to its pool factory: FailFastPool must check "
        f"connections itself (see {DOCS.name})"
    )


def test_log_actions_procqueue_filters_exist() -> None:
    """procqueue's log filter (queue/logs.py) drops Procrastinate's own per-attempt lines
    by their `action`: a renamed action would double every log line."""
    logs = importlib.import_module("procqueue.queue.logs")
    actions = {
        action
        for name, value in vars(logs).items()
        if name.endswith("_ACTIONS") and isinstance(value, frozenset | set)
        for action in value
    }
    assert actions, "procqueue.queue.logs no longer filters Procrastinate actions"
    package = Path(procrastinate.__file__).parent
    source = "\n".join(path.read_text(encoding="utf-8") for path in package.rglob("*.py"))
    for action in sorted(actions):
        assert f'"{action}"' in source, f"Procrastinate logs no action {action!r} any more"


# f. Procrastinate's SQL that procqueue's SQL uses --------------------------------


def test_procrastinate_sql_names_procqueue_uses_are_reviewed() -> None:
    used = {
        name
        for path in procqueue_sql_files()
        for name in re.findall(r"\bprocrastinate_[a-z0-9_]+", path.read_text(encoding="utf-8"))
    }
    unreviewed = sorted(used - SQL_NAMES)
    assert not unreviewed, (
        f"procqueue's SQL names {unreviewed} of Procrastinate's: add them to SQL_NAMES (and "
        "to SQL_FUNCTIONS if procqueue calls or mirrors a function)"
    )


def test_procrastinate_sql_names_procqueue_uses_exist() -> None:
    missing = sorted(SQL_NAMES - schema_definitions())
    assert not missing, (
        f"Procrastinate {procrastinate.__version__}'s schema no longer creates {missing}, "
        "which procqueue's SQL uses"
    )


def test_procrastinate_functions_procqueue_relies_on_are_the_reviewed_ones() -> None:
    changed = {
        name: current
        for name, recorded in SQL_FUNCTIONS.items()
        if (current := checksum(function_definition(name))) != recorded
    }
    assert not changed, (
        f"Procrastinate {procrastinate.__version__} changed SQL functions procqueue calls or "
        f"mirrors: {changed}. Re-read each in procrastinate/sql/schema.sql against "
        "procqueue/*/queries.sql and migrations/ (docs/procrastinate.md says which query "
        "mirrors which), then record the new checksums in SQL_FUNCTIONS"
    )


def test_procrastinate_columns_procqueue_uses_exist() -> None:
    for table, columns in SQL_COLUMNS.items():
        missing = sorted(columns - table_columns(table))
        assert not missing, f"Procrastinate's {table} has no column {missing} any more"


def test_procrastinate_labels_procqueue_uses_exist() -> None:
    for type_name, labels in SQL_LABELS.items():
        missing = sorted(labels - enum_labels(type_name))
        assert not missing, f"Procrastinate's {type_name} has no label {missing} any more"


def test_procrastinate_errors_procqueue_tells_apart_are_still_raised() -> None:
    for meaning, fragment in ERROR_TEXTS.items():
        assert fragment in schema_sql(), (
            f"Procrastinate's schema no longer has {fragment!r}: procqueue tells {meaning} by "
            "it (procqueue/engine/outages.py)"
        )
