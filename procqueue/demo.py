"""The local demo: `./scripts/demo` runs this.

Makes its own database (`procqueue_demo`; `procqueue_demo_check` with --check) on
the Postgres server on 127.0.0.1:5432, else on a throwaway pgserver (or on
--server), marked with a COMMENT so that the demo only ever replaces or drops a
database it made, and never one in use. Uses an Elasticsearch-API server
(ELASTICSEARCH_URL, else a local one), and always its own loopback SMTP, FCM and
Cloudinary stand-ins (procqueue/loopback/), so that email, push and image cleanup
happen and reach no real inbox, phone or account. Applies the sample schema and the
migrations (with a short image-cleanup grace in a database it made), seeds sample
rows, plays the sample story (a listing approved: an email and a push; a photo
replaced: a Cloudinary deletion) and prints each delivery, indexes the rows, then
runs a worker and the dashboard until Ctrl-C, SIGTERM or SIGHUP, which all stop
every server it started and drop its database. `--check` stops once the seeded rows
are indexed and the story delivered. A database named by DATABASE_URL is used only
with --use-existing (or if the demo made it): it is seeded (and the story played)
only while its sample tables are empty, and never dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
import sys
from collections.abc import Callable, Collection, Coroutine, Iterator
from importlib.resources.abc import Traversable
from typing import Any, TypeVar

import psycopg
import uvicorn
from psycopg import sql

from procqueue import resources
from procqueue.app import build_app
from procqueue.dashboard.app import make_server
from procqueue.dashboard.security import LOCAL_HOST, access_for
from procqueue.entities import DEFAULT_ENTITIES
from procqueue.errors import ConfigError, ProcqueueError
from procqueue.features import Settings, get_settings, load_settings
from procqueue.images.urls import DeliveryConfig, assets_of
from procqueue.local import database_dsn, env, install_sample_schema, local_postgres, local_search
from procqueue.loopback.sinks import DELETION, EMAIL, KINDS, PUSH, LoopbackSinks, loopback_sinks
from procqueue.migrate import DEFAULT_SCHEMA, first_line, migrate
from procqueue.queries import NamedQueries
from procqueue.queue.logs import configure_logging
from procqueue.redaction import redact
from procqueue.search.client import SearchIndex, search_index
from procqueue.search.reindex import reindex_entity

logger = logging.getLogger("procqueue.demo")
query = NamedQueries("procqueue", "sql/demo.sql").query
T = TypeVar("T")

#: The comment on every database the demo makes: it drops or seeds no other.
MARKER = "procqueue demo: made by ./scripts/demo, dropped when it stops"
DEMO_DATABASE = "procqueue_demo"
#: --check has its own, so that it never touches a demo running in another terminal.
CHECK_DATABASE = "procqueue_demo_check"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
#: Seconds between an image's removal and its cleanup, in a database the demo made
#: (the default, ten minutes, would keep the sample story's deletion out of sight).
DEMO_IMAGE_GRACE = 2.0
#: How long the demo waits for the sample story's email, push and deletion.
STORY_TIMEOUT = 60.0
STORY = """\
Sample story: listing 'İlan: Bisiklet 1' approved, a photo of item 'Bisiklet 1' replaced.
Delivered to the loopback stand-ins:"""


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP stop the demo as Ctrl-C does, cleaning up on the way out.
    (Set again after each event loop: closing one resets the handlers it added.)"""
    for number in STOP_SIGNALS:
        signal.signal(number, _interrupt)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coroutine)
    finally:
        stop_on_signals()


def _state(admin: psycopg.Connection[Any], name: str) -> tuple[str | None, int] | None:
    row = admin.execute(query("demo_database_state"), {"name": name}).fetchone()
    return None if row is None else (row[0], int(row[1]))


@contextlib.contextmanager
def own_database(admin_dsn: str, name: str) -> Iterator[str]:
    """A new database `name` with the demo's marker, dropped afterwards. One left by an
    earlier demo is replaced; one in use, or not the demo's, is refused."""
    identifier = sql.Identifier(name)
    try:
        connection = psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as error:
        raise ConfigError(
            f"cannot connect to the Postgres server {redact(admin_dsn)}: {first_line(error)}"
        ) from None
    with connection as admin:
        state = _state(admin, name)
        if state is not None:
            comment, sessions = state
            if comment != MARKER:
                raise ConfigError(
                    f"database {name} exists and the demo did not make it, so the demo leaves "
                    "it alone: pass --database <another name>"
                )
            if sessions:
                raise ConfigError(
                    f"database {name} is in use ({sessions} session(s)): another demo runs on "
                    "it; stop that one first, or pass --database <another name>"
                )
            try:
                admin.execute(sql.SQL("DROP DATABASE {}").format(identifier))
            except psycopg.Error as error:
                raise ConfigError(f"cannot replace database {name}: {first_line(error)}") from None
        admin.execute(sql.SQL("CREATE DATABASE {}").format(identifier))
        admin.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(identifier, sql.Literal(MARKER))
        )
    try:
        yield database_dsn(admin_dsn, name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            state = _state(admin, name)
            if state is not None and state[0] == MARKER:
                admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(identifier))


def _made_by_the_demo(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query("demo_current_marker")).fetchone()
    return row is not None and row[0] == MARKER


@contextlib.contextmanager
def demo_database(args: argparse.Namespace) -> Iterator[str]:
    """The database the demo may seed: its own, or DATABASE_URL's when allowed."""
    configured = env("DATABASE_URL") if args.server is None else None
    if configured:
        if not (args.use_existing or _made_by_the_demo(configured)):
            params = psycopg.conninfo.conninfo_to_dict(configured)
            raise ConfigError(
                f"DATABASE_URL names database {params.get('dbname', '?')} on "
                f"{params.get('host', 'localhost')}, which the demo did not make: the demo "
                "would install its sample schema and seed sample rows there. Unset "
                "DATABASE_URL (the demo then makes its own database), or pass --use-existing"
            )
        yield configured
        return
    server = contextlib.nullcontext(args.server) if args.server is not None else local_postgres()
    with server as admin, own_database(admin, args.database) as dsn:
        yield dsn


def seed(dsn: str, seed_file: Traversable | None = None) -> bool:
    """Insert the sample rows (examples/seed.sql unless `seed_file`), unless the sample
    tables hold rows already; whether it did."""
    text = (resources.seed() if seed_file is None else seed_file).read_text(encoding="utf-8")
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query("demo_has_sample_rows")).fetchone()
        if row and row[0]:
            return False
        conn.execute(text)
    return True


def demo_settings(dsn: str, es_url: str, sinks: LoopbackSinks, **overrides: Any) -> Settings:
    """The demo's settings: its database and ES-API server, and every email, push and
    Cloudinary call to the loopback stand-ins, whatever the environment says."""
    # A job due later (the image cleanup after its grace) sends no NOTIFY: poll each second.
    values = {"polling_interval": 1.0, **sinks.settings(), **overrides}
    return load_settings(database_url=dsn, elasticsearch_url=es_url, **values)


@dataclasses.dataclass(frozen=True)
class Setup:
    seeded: bool  # the sample rows went in (and the story was played)
    grace: float  # seconds between an image's removal and its cleanup
    expected: frozenset[str]  # the story's deliveries to wait for


def set_up(dsn: str, sinks: LoopbackSinks) -> Setup:
    """Sample schema, migrations, sample rows (into empty sample tables only), the
    Cloudinary stand-in stocked with their images, and the sample story played."""
    # A short grace only where the demo owns the triggers: never in a database of yours.
    own = _made_by_the_demo(dsn)
    grace = DEMO_IMAGE_GRACE if own else DEFAULT_SCHEMA.image_cleanup_grace
    install_sample_schema(dsn)
    migrate(dsn, dataclasses.replace(DEFAULT_SCHEMA, image_cleanup_grace=grace))
    seeded = seed(dsn)
    store_sample_images(dsn, sinks)
    if not seeded:
        return Setup(seeded, grace, frozenset())
    print(STORY, flush=True)
    play_story(dsn)
    return Setup(seeded, grace, frozenset({EMAIL, PUSH, DELETION} if own else {EMAIL, PUSH}))


def store_sample_images(dsn: str, sinks: LoopbackSinks) -> None:
    """The Cloudinary stand-in holds every sample row's image, as if uploaded: a
    cleanup deletes it (rather than finding it gone)."""
    with psycopg.connect(dsn) as conn:
        urls = [url for (url,) in conn.execute(query("demo_image_urls"))]
    for asset in assets_of(urls, DeliveryConfig.of(sinks.cloud.cloud_name)):
        sinks.cloud.store(
            asset.public_id, resource_type=asset.resource_type, delivery_type=asset.delivery_type
        )


def play_story(dsn: str) -> None:
    """The sample story, as the marketplace would write it: a moderator approves the
    waiting listing (its owner's email and push), an item's photo is replaced (the
    old one's cleanup)."""
    with psycopg.connect(dsn) as conn:
        conn.execute(query("demo_story_approve"))
        conn.execute(query("demo_story_replace_image"))


async def deliver_story(settings: Settings, sinks: LoopbackSinks, kinds: Collection[str]) -> bool:
    """Run a worker until one delivery of each of `kinds` reached the sinks (each
    printed as it arrives); whether they all did within STORY_TIMEOUT."""
    app = build_app(settings)
    async with app.open_async():
        worker = asyncio.create_task(app.run_worker_async(install_signal_handlers=False))
        try:
            return await sinks.wait_for(kinds, STORY_TIMEOUT)
        finally:
            worker.cancel()  # a graceful stop: a running job ends first
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            await app.services.aclose()


async def index_existing_rows(settings: Settings) -> None:
    """Sample rows from an earlier run: build each index the ES-API server lacks (a new
    local server has none), as `procqueue reindex` does."""
    search = SearchIndex.from_config(settings.search)
    try:
        for entity in DEFAULT_ENTITIES:
            if await search.client.indices.exists_alias(name=search.alias(entity)):
                continue
            async with (
                await psycopg.AsyncConnection.connect(settings.dsn, autocommit=True) as conn,
                await psycopg.AsyncConnection.connect(settings.dsn) as reader,
            ):
                await reindex_entity(conn, reader, search, entity)
    finally:
        await search.aclose()


async def count_indexed(settings: Settings) -> dict[str, int]:
    app = build_app(settings)
    search = search_index(app.services)
    counts = {}
    try:
        for entity in DEFAULT_ENTITIES:
            alias = search.alias(entity)
            if await search.client.indices.exists_alias(name=alias):
                await search.client.indices.refresh(index=alias)
                counts[entity.index] = (await search.client.count(index=alias))["count"]
    finally:
        await app.services.aclose()
    return counts


async def run_worker(settings: Settings, *, until_idle: bool) -> None:
    app = build_app(settings)
    async with app.open_async():
        try:
            await app.run_worker_async(wait=not until_idle, install_signal_handlers=False)
        finally:
            await app.services.aclose()


class AnnouncingServer(uvicorn.Server):
    """The dashboard's uvicorn server, setting `listening` once it accepts connections."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.listening.set()


async def run_system(settings: Settings, dashboard_port: int, ready: Callable[[], None]) -> None:
    """A worker and the dashboard (with /metrics and /healthz) until Ctrl-C, SIGTERM or
    SIGHUP; `ready()` once the dashboard answers."""
    access = access_for(settings, LOCAL_HOST, local_only=True)
    dashboard = AnnouncingServer(make_server(settings, access, LOCAL_HOST, dashboard_port).config)
    loop = asyncio.get_running_loop()
    for number in STOP_SIGNALS:
        loop.add_signal_handler(number, setattr, dashboard, "should_exit", True)
    app = build_app(settings)
    async with app.open_async():
        worker = asyncio.create_task(app.run_worker_async(install_signal_handlers=False))
        serving = asyncio.create_task(dashboard.serve())
        listening = asyncio.create_task(dashboard.listening.wait())
        try:
            await asyncio.wait([serving, listening], return_when=asyncio.FIRST_COMPLETED)
            if listening.done():
                ready()
            await serving  # returns on Ctrl-C, SIGTERM or SIGHUP
        finally:
            listening.cancel()
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            await app.services.aclose()


def instructions(
    dsn: str, settings: Settings, dashboard_port: int, sinks: LoopbackSinks, grace: float
) -> str:
    return f"""
procqueue demo is running.
  Postgres:       {redact(dsn)}
  Elasticsearch:  {settings.elasticsearch_url}
  Dashboard:      http://{LOCAL_HOST}:{dashboard_port}/   (/metrics, /healthz)
  Loopback stand-ins (nothing leaves this machine; each delivery prints a line below):
    Email (SMTP): {sinks.smtp.host}:{sinks.smtp.port}
    Push (FCM):   {sinks.fcm.url}
    Cloudinary:   {sinks.cloud.url}
    Received:     curl -s {sinks.outbox_url}   (every email, push and deletion, as JSON)
Try, in another terminal:
  psql "{dsn}" -c \\
    "UPDATE listings SET title = 'Yeni başlık' WHERE id = (SELECT id FROM listings LIMIT 1)"
  curl -s '{settings.elasticsearch_url}/listings/_search?q=title:Yeni&pretty'
  # a listing sent back for review, then approved: an email and a push
  psql "{dsn}" -c \\
    "UPDATE listings SET status = 'pending_approval' WHERE title = 'İlan: Bisiklet 2'" -c \\
    "UPDATE listings SET status = 'active' WHERE title = 'İlan: Bisiklet 2'"
  # a photo removed: deleted from Cloudinary {grace:g} s later
  psql "{dsn}" -c \\
    "UPDATE inventory_items SET additional_image_urls = '{{}}' WHERE name = 'Bisiklet 2'"
  psql "{dsn}" -c \\
    "SELECT task_name, status, count(*) FROM procrastinate.procrastinate_jobs GROUP BY 1, 2"
Ctrl-C stops the demo (and drops a database it made).
"""


@contextlib.contextmanager
def quiet_jobs(verbose: bool) -> Iterator[None]:
    """No line per job while the seed is indexed and the story delivered (each delivery
    prints its own line): start-up stays a few lines."""
    names = ("procqueue.queue.outcomes", "procqueue.engine", "procqueue.images")
    loggers = [logging.getLogger(name) for name in names]
    levels = [each.level for each in loggers]
    for each in loggers if not verbose else ():
        each.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for each, level in zip(loggers, levels, strict=True):
            each.setLevel(level)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="procqueue-demo", description=__doc__)
    parser.add_argument("--check", action="store_true", help="stop once the seed is indexed")
    parser.add_argument("--dashboard-port", type=int, default=8484, help="dashboard port")
    parser.add_argument(
        "--database",
        default=None,
        help=f"name of the database the demo makes (default {DEMO_DATABASE}, "
        f"with --check {CHECK_DATABASE})",
    )
    parser.add_argument(
        "--server",
        default=None,
        help="admin DSN of the Postgres server to make it on (default: 127.0.0.1:5432 if it "
        "answers, else a throwaway server); DATABASE_URL is then not used",
    )
    parser.add_argument(
        "--use-existing",
        action="store_true",
        help="use DATABASE_URL's database although the demo did not make it (sample schema, "
        "migrations, seed rows if its sample tables are empty; never dropped)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="every log line")
    args = parser.parse_args(argv)
    if args.database is None:
        args.database = CHECK_DATABASE if args.check else DEMO_DATABASE
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(get_settings, verbose=args.verbose)
    if not args.verbose:  # the worker's and the SMTP stand-in's own lines: the demo says
        for name in ("procrastinate", "mail.log"):  # what matters
            logging.getLogger(name).setLevel(logging.WARNING)
    stop_on_signals()
    try:
        with contextlib.suppress(KeyboardInterrupt):
            return demo(args)
    except ProcqueueError as error:
        print(f"procqueue-demo: error: {error}", file=sys.stderr)
        return 2
    return 0


def demo(args: argparse.Namespace) -> int:
    with (
        demo_database(args) as dsn,
        local_search(env("ELASTICSEARCH_URL")) as es_url,
        loopback_sinks() as sinks,
    ):
        sinks.report = lambda line: print(line, flush=True)
        settings = demo_settings(dsn, es_url, sinks)
        setup = set_up(dsn, sinks)
        if not setup.seeded:
            run(index_existing_rows(settings))
        with quiet_jobs(args.verbose):
            run(run_worker(settings, until_idle=True))
            delivered = not setup.expected or run(deliver_story(settings, sinks, setup.expected))
        counts = run(count_indexed(settings))
        logger.info(
            "%s; indexed: %s",
            "sample rows seeded" if setup.seeded else "the sample tables had rows: not seeded",
            ", ".join(f"{count} {index}" for index, count in counts.items()) or "nothing",
        )
        if not delivered:
            missing = [kind for kind in KINDS if kind in setup.expected - sinks.arrived]
            logger.warning(
                "the sample story's %s did not arrive in %g s", " and ".join(missing), STORY_TIMEOUT
            )
        if args.check:
            print(f"indexed: {counts}")
            return 0 if counts and all(counts.values()) and delivered else 1
        text = instructions(dsn, settings, args.dashboard_port, sinks, setup.grace)
        run(run_system(settings, args.dashboard_port, lambda: print(text, flush=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
