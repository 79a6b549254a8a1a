"""`procqueue metrics`: serve /metrics (Prometheus) and /healthz over HTTP."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from procqueue.commands.arguments import PORT
from procqueue.features import get_settings

DEFAULT_PORT = 9464


def run(args: argparse.Namespace) -> int:
    # Imported here: the web stack (Starlette, uvicorn) is for this command only.
    from procqueue.queue.server import make_server

    server = make_server(get_settings(), args.host, args.port)
    print(f"serving http://{args.host}:{args.port}/metrics and /healthz", flush=True)
    asyncio.run(server.serve())
    return 0


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "metrics", help="serve Prometheus /metrics and /healthz (queue gauges from the health SQL)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=PORT, default=DEFAULT_PORT, help="port to listen on")
    parser.set_defaults(handler=run)
