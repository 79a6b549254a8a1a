"""A loopback HTTP server speaking the Cloudinary Admin API endpoint the cleanup
uses, for the real `cloudinary` SDK (configured with `upload_prefix` = its URL):

    DELETE /v1_1/<cloud>/resources/<resource_type>/<type>   public_ids[] (JSON or form)

It keeps a set of stored assets (so a deletion answers "deleted" or "not_found"
as Cloudinary does), checks HTTP Basic credentials (401 otherwise), sends the
X-FeatureRateLimit-* headers, records every call, and can be scripted: the next
calls answered with given replies (500, 420 with a reset time, 404...), an
outage answering every call with failures, or dropped connections. The tests and
the demo use it; `listeners` are told of each call, after it is recorded.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from procqueue.loopback.http import Reply, send_json

AssetKey = tuple[str, str, str]  # resource type, delivery type, public id


#: Close the connection without answering (a network failure).
DROP = Reply(0, {})


def error(status: int, message: str) -> Reply:
    return Reply(status, {"error": {"message": message}})


def rate_limited(reset_at: datetime, limit: int = 500) -> Reply:
    """Cloudinary's 420: the reset time in the header and in the message."""
    return Reply(
        420,
        {
            "error": {
                "message": f"Rate Limit Exceeded. Limit of {limit} api operations reached. "
                f"Try again on {reset_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
            }
        },
        {
            "X-FeatureRateLimit-Limit": str(limit),
            "X-FeatureRateLimit-Remaining": "0",
            "X-FeatureRateLimit-Reset": email.utils.format_datetime(reset_at, usegmt=True),
        },
    )


@dataclass(frozen=True)
class Call:
    at: float  # time.time() when the request arrived
    method: str
    path: str
    cloud: str
    resource_type: str
    delivery_type: str
    public_ids: tuple[str, ...]
    api_key: str | None
    status: int

    @property
    def keys(self) -> set[AssetKey]:
        return {
            (self.resource_type, self.delivery_type, public_id) for public_id in self.public_ids
        }


class CloudinaryServer:
    def __init__(
        self, cloud_name: str = "demo", api_key: str = "test-key", api_secret: str = "test-secret"
    ) -> None:
        self.cloud_name = cloud_name
        self.api_key = api_key
        self.api_secret = api_secret
        self.assets: set[AssetKey] = set()
        self.calls: list[Call] = []
        self.rate_limit = 500  # calls left in the window (X-FeatureRateLimit-Remaining)
        self.reset_at: datetime | None = None  # X-FeatureRateLimit-Reset (default: hour's end)
        self._script: list[Reply] = []
        self._outage: Iterator[Reply] | None = None
        self._lock = threading.Lock()
        self.listeners: list[Callable[[Call], None]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def credentials_url(self, secret: str | None = None) -> str:
        return f"cloudinary://{self.api_key}:{secret or self.api_secret}@{self.cloud_name}"

    def start(self) -> CloudinaryServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- scripting ---------------------------------------------------------
    def store(
        self, *public_ids: str, resource_type: str = "image", delivery_type: str = "upload"
    ) -> None:
        with self._lock:
            self.assets |= {(resource_type, delivery_type, public_id) for public_id in public_ids}

    def stored(
        self, public_id: str, resource_type: str = "image", delivery_type: str = "upload"
    ) -> bool:
        with self._lock:
            return (resource_type, delivery_type, public_id) in self.assets

    def script(self, *replies: Reply) -> None:
        """Answer the next calls with these replies, in order, then normally."""
        with self._lock:
            self._script.extend(replies)

    @contextlib.contextmanager
    def outage(self, *replies: Reply) -> Iterator[None]:
        """Answer every call with these replies (cycled) for the duration of the block."""
        with self._lock:
            self._outage = itertools.cycle(replies or (error(503, "Service Unavailable"),))
        try:
            yield
        finally:
            with self._lock:
                self._outage = None

    def calls_made(self) -> list[Call]:
        """Every call so far, oldest first (a copy)."""
        with self._lock:
            return list(self.calls)

    def calls_for(self, public_ids: Sequence[str]) -> list[Call]:
        wanted = set(public_ids)
        with self._lock:
            return [call for call in self.calls if wanted & set(call.public_ids)]

    def deleted_ids(self, public_ids: Sequence[str]) -> set[str]:
        """Which of these public ids some successful call asked to delete."""
        return {
            public_id
            for call in self.calls_for(public_ids)
            if call.status == 200
            for public_id in call.public_ids
            if public_id in public_ids
        }

    # -- serving -----------------------------------------------------------
    def _answer(
        self, method: str, path: str, auth: str | None, body: bytes, content_type: str
    ) -> Reply:
        segments = [unquote(part) for part in urlsplit(path).path.split("/")[1:]]
        public_ids = _public_ids(body, content_type, urlsplit(path).query)
        key = _basic_key(auth)
        valid = (
            method == "DELETE"
            and len(segments) == 5
            and segments[0] == "v1_1"
            and segments[2] == "resources"
        )
        cloud, resource_type, delivery_type = (
            (segments[1], segments[3], segments[4]) if valid else ("", "", "")
        )
        with self._lock:
            reply = self._choose(valid, cloud, auth, resource_type, delivery_type, public_ids)
            call = Call(
                time.time(),
                method,
                path,
                cloud,
                resource_type,
                delivery_type,
                tuple(public_ids),
                key,
                reply.status,
            )
            self.calls.append(call)
        for listener in self.listeners:
            listener(call)
        return reply

    def _choose(
        self,
        valid: bool,
        cloud: str,
        auth: str | None,
        resource_type: str,
        delivery_type: str,
        public_ids: list[str],
    ) -> Reply:
        if self._outage is not None:
            return next(self._outage)
        if self._script:
            return self._script.pop(0)
        if not valid:
            return error(404, "Resource not found - unknown endpoint")
        if auth != _basic(self.api_key, self.api_secret):
            return error(401, "Invalid credentials")
        if cloud != self.cloud_name:
            return error(401, "cloud_name mismatch")
        if not public_ids or len(public_ids) > 100:
            return error(400, "public_ids must hold 1 to 100 ids")
        deleted = {}
        for public_id in public_ids:
            key = (resource_type, delivery_type, public_id)
            deleted[public_id] = "deleted" if key in self.assets else "not_found"
            self.assets.discard(key)
        self.rate_limit -= 1
        reset_at = self.reset_at or datetime.now(UTC).replace(minute=59, second=59, microsecond=0)
        reset = email.utils.format_datetime(reset_at, usegmt=True)
        counts = {
            public_id: {"original": int(status == "deleted"), "derived": 0}
            for public_id, status in deleted.items()
        }
        return Reply(
            200,
            {"deleted": deleted, "deleted_counts": counts, "partial": False},
            {
                "X-FeatureRateLimit-Limit": "500",
                "X-FeatureRateLimit-Remaining": str(max(self.rate_limit, 0)),
                "X-FeatureRateLimit-Reset": reset,
            },
        )

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                reply = server._answer(
                    self.command,
                    self.path,
                    self.headers.get("Authorization"),
                    body,
                    self.headers.get("Content-Type", ""),
                )
                if reply is DROP:
                    self.close_connection = True
                    return
                send_json(self, reply)

            do_DELETE = do_GET = do_POST = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _basic(key: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()


def _basic_key(auth: str | None) -> str | None:
    if not auth or not auth.startswith("Basic "):
        return None
    with contextlib.suppress(ValueError):
        return base64.b64decode(auth[6:]).decode().split(":", 1)[0]
    return None


def _public_ids(body: bytes, content_type: str, query: str) -> list[str]:
    if body and "json" in content_type:
        data = json.loads(body)
        return [str(value) for value in data.get("public_ids", [])]
    form = parse_qs(body.decode() if body else query)
    return form.get("public_ids[]", form.get("public_ids", []))


@contextlib.contextmanager
def cloudinary_server(**options: Any) -> Iterator[CloudinaryServer]:
    server = CloudinaryServer(**options).start()
    try:
        yield server
    finally:
        server.stop()
