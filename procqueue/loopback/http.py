"""What the HTTP stand-ins share: a reply (status, JSON body, headers) and how it is sent."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def send_json(handler: BaseHTTPRequestHandler, reply: Reply, *, readable: bool = False) -> None:
    """Answer with `reply`; `readable`: indented, non-ASCII as is (for people)."""
    text = (
        json.dumps(reply.body, indent=2, ensure_ascii=False) if readable else json.dumps(reply.body)
    )
    payload = text.encode()
    handler.send_response(reply.status)
    handler.send_header("Content-Type", "application/json; charset=utf-8")
    handler.send_header("Content-Length", str(len(payload)))
    for name, value in reply.headers.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(payload)
