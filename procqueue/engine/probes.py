"""A worker process's own HTTP port (PROCQUEUE_METRICS_PORT), served from a thread
of its own, so that it answers even while a job blocks the worker's event loop:

- `/metrics`: this process's job counters and histograms (procqueue/queue/metrics.py);
- `/livez`: 200 while the worker's fetch loop and heartbeat go round, 503 with the
  reason when one is stuck or stale or the worker is stopping
  (procqueue/engine/liveness.py) — whatever Elasticsearch and the other sinks do;
- `/readyz`: 200 when a new connection to Postgres answers `SELECT 1` within
  READY_TIMEOUT, else 503 with Postgres's reason (credentials removed).

Queue-wide health (`/healthz`: lag, failures, open circuits, every worker) is not one
worker's: `procqueue metrics` and the dashboard serve it. Each answer is one line of
text."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import psycopg
from prometheus_client import REGISTRY, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from procqueue.engine.connections import connect
from procqueue.engine.outages import first_line
from procqueue.engine.services import Services
from procqueue.redaction import redact

logger = logging.getLogger(__name__)

#: Seconds `/readyz` gives Postgres to accept a connection and answer.
READY_TIMEOUT = 3
PROBE_APPLICATION = "procqueue-worker-probe"
#: The probe paths (deploy/kubernetes/worker.yaml points its probes at them).
LIVE_PATH = "/livez"
READY_PATH = "/readyz"
NOT_HERE = (
    "not found: a worker's port serves /metrics, /livez and /readyz; the queue-wide "
    "/healthz is served by `procqueue metrics` and the dashboard"
)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def liveness(services: Services) -> tuple[bool, str]:
    """(alive, why): the running worker's verdict; alive while it starts."""
    running = services.liveness
    if running is None:
        return True, "starting: the worker runs its start-up checks"
    return running.verdict()


def readiness(services: Services) -> tuple[bool, str]:
    """(ready, why): whether a new connection to Postgres answers."""
    settings = services.settings
    try:
        with connect(
            settings.dsn,
            transaction_pooler=settings.uses_transaction_pooler,
            application_name=PROBE_APPLICATION,
            autocommit=True,
            connect_timeout=READY_TIMEOUT,
        ) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as error:
        reason = redact(first_line(error), settings.secret_values())
        return False, f"not ready: Postgres does not answer (DATABASE_URL): {reason}"
    return True, "ready: Postgres answers"


def probe_app(services: Services) -> WsgiApp:
    """The WSGI app of a worker's port."""
    metrics = make_wsgi_app(REGISTRY)
    probes = {LIVE_PATH: liveness, READY_PATH: readiness}

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path in ("/", "/metrics"):
            scrape: Iterable[bytes] = metrics(environ, start_response)
            return scrape
        probe = probes.get(path)
        if probe is None:
            status, text = "404 Not Found", NOT_HERE
        else:
            good, text = probe(services)
            status = "200 OK" if good else "503 Service Unavailable"
        body = f"{text}\n".encode()
        start_response(
            status,
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return app


class _Quiet(WSGIRequestHandler):
    """No access log line per scrape or probe."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def start_worker_server(services: Services, port: int, host: str = "0.0.0.0") -> None:
    """Serve the worker's port (a daemon thread) until the process ends."""
    server = make_server(host, port, probe_app(services), ThreadingWSGIServer, _Quiet)
    threading.Thread(target=server.serve_forever, name="worker port", daemon=True).start()
    logger.info("worker metrics and probes on http://%s:%d (/metrics, /livez, /readyz)", host, port)
