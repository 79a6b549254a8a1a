"""`procqueue dashboard`: serve the queue dashboard (docs/dashboard.md)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from procqueue.commands.arguments import PORT
from procqueue.dashboard.security import LOCAL_HOST, access_for
from procqueue.features import get_settings

DEFAULT_PORT = 8484


def run(args: argparse.Namespace) -> int:
    # Imported here: the web stack (Starlette, Jinja2, uvicorn) is for this command only.
    from procqueue.dashboard.app import make_server

    settings = get_settings()
    host = args.host or LOCAL_HOST
    access = access_for(settings, host, args.local_only)
    server = make_server(settings, access, host, args.port)
    how = (
        "no sign-in (--local-only)"
        if access.open_locally
        else "admins sign in with Supabase Auth"
        if access.supabase
        else "sign in with the admin secret"
    )
    print(f"dashboard on http://{host}:{args.port}/ ({how}); /metrics and /healthz open")
    asyncio.run(server.serve())
    return 0


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "dashboard", help="serve the web dashboard: queues, jobs, failures, retry and cancel"
    )
    parser.add_argument("--host", default=None, help=f"address to listen on (default {LOCAL_HOST})")
    parser.add_argument("--port", type=PORT, default=DEFAULT_PORT, help="port to listen on")
    parser.add_argument(
        "--local-only",
        action="store_true",
        help=f"serve {LOCAL_HOST} only, without sign-in, when PROCQUEUE_DASHBOARD_SECRET is unset",
    )
    parser.set_defaults(handler=run)
