"""The local demo: `./scripts/demo` runs this.

Brings up Postgres (DATABASE_URL, else the server on 127.0.0.1:5432, else a
throwaway pgserver) and an Elasticsearch-API server (ELASTICSEARCH_URL, else a
local one), applies the sample schema and the migrations, seeds sample rows and
runs a worker and the dashboard until Ctrl-C. `--check` stops once the seeded rows are indexed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterator
from importlib.resources.abc import Traversable

import psycopg

from procqueue import resources
from procqueue.app import build_app
from procqueue.dashboard.app import make_server
from procqueue.dashboard.security import LOCAL_HOST, access_for
from procqueue.entities import DEFAULT_ENTITIES
from procqueue.local import (
    env,
    install_sample_schema,
    local_postgres,
    local_search,
    scratch_database,
)
from procqueue.migrate import migrate
from procqueue.queue.failures import redact
from procqueue.search.client import search_index
from procqueue.settings import Settings, load_settings

logger = logging.getLogger("procqueue.demo")


@contextlib.contextmanager
def demo_database() -> Iterator[str]:
    configured = env("DATABASE_URL")
    if configured:
        yield configured
        return
    with local_postgres() as admin, scratch_database(admin, "procqueue_demo") as dsn:
        yield dsn


def seed(dsn: str, seed_file: Traversable | None = None) -> None:
    """Insert the sample rows (examples/seed.sql unless `seed_file`)."""
    text = (resources.seed() if seed_file is None else seed_file).read_text(encoding="utf-8")
    with psycopg.connect(dsn) as conn:
        conn.execute(text)


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
            await app.run_worker_async(wait=not until_idle)
        finally:
            await app.services.aclose()


async def run_system(settings: Settings, dashboard_port: int) -> None:
    """A worker and the dashboard (with /metrics and /healthz) until Ctrl-C."""
    access = access_for(settings, LOCAL_HOST, local_only=True)
    dashboard = make_server(settings, access, LOCAL_HOST, dashboard_port)
    app = build_app(settings)
    async with app.open_async():
        worker = asyncio.create_task(app.run_worker_async(install_signal_handlers=False))
        try:
            await dashboard.serve()  # returns on Ctrl-C
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            await app.services.aclose()


def instructions(dsn: str, settings: Settings, dashboard_port: int) -> str:
    return f"""
procqueue demo is running.
  Postgres:       {redact(dsn)}
  Elasticsearch:  {settings.elasticsearch_url}
  Dashboard:      http://{LOCAL_HOST}:{dashboard_port}/   (/metrics, /healthz)
Try, in another terminal:
  psql "{dsn}" -c \\
    "UPDATE listings SET title = 'Yeni başlık' WHERE id = (SELECT id FROM listings LIMIT 1)"
  curl -s '{settings.elasticsearch_url}/listings/_search?q=title:Yeni&pretty'
  psql "{dsn}" -c \\
    "SELECT task_name, status, count(*) FROM procrastinate.procrastinate_jobs GROUP BY 1, 2"
Ctrl-C stops the demo.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="procqueue-demo", description=__doc__)
    parser.add_argument("--check", action="store_true", help="stop once the seed is indexed")
    parser.add_argument("--dashboard-port", type=int, default=8484, help="dashboard port")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("elastic_transport").setLevel(logging.WARNING)

    with demo_database() as dsn, local_search(env("ELASTICSEARCH_URL")) as es_url:
        settings = load_settings(database_url=dsn, elasticsearch_url=es_url)
        install_sample_schema(dsn)
        migrate(dsn)
        seed(dsn)
        logger.info("schema, queue and sample rows are in place")
        if args.check:
            asyncio.run(run_worker(settings, until_idle=True))
            counts = asyncio.run(count_indexed(settings))
            print(f"indexed: {counts}")
            return 0 if counts and all(counts.values()) else 1
        print(instructions(dsn, settings, args.dashboard_port))
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_system(settings, args.dashboard_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
