"""A loopback HTTP server speaking the two Google endpoints push uses:

    POST /token                                   OAuth2 JWT-bearer grant
    POST /v1/projects/<project>/messages:send      FCM HTTP v1 send

The token endpoint verifies the assertion's RS256 signature with the service
account's public key, its issuer, audience and scope, and hands out access
tokens (lifetime scriptable). The send endpoint checks the bearer token and
the project, records every call, and answers per device token with scripted
replies: success by default, or UNREGISTERED, an invalid token, 503 with a
Retry-After... The tests and the demo use it; `listeners` are told of each send,
and `service_account()` makes the throwaway key its token endpoint checks.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt

from procqueue.loopback.http import Reply, send_json

GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"


def fcm_error(
    status: int, grpc_status: str, message: str, code: str, headers: dict[str, str] | None = None
) -> Reply:
    body = {
        "error": {
            "code": status,
            "message": message,
            "status": grpc_status,
            "details": [
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}
            ],
        }
    }
    return Reply(status, body, headers or {})


UNREGISTERED = fcm_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED")
INVALID_TOKEN = fcm_error(
    400,
    "INVALID_ARGUMENT",
    "The registration token is not a valid FCM registration token",
    "INVALID_ARGUMENT",
)


def unavailable(retry_after: int | None = None) -> Reply:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return fcm_error(
        503, "UNAVAILABLE", "The service is currently unavailable.", "UNAVAILABLE", headers
    )


@dataclass
class Send:
    device_token: str
    message: dict[str, Any]
    status: int


@dataclass
class FcmState:
    project_id: str
    public_key_pem: bytes
    client_email: str
    url: str = ""
    token_lifetime: int = 3600
    token_requests: int = 0
    access_tokens: set[str] = field(default_factory=set)
    sends: list[Send] = field(default_factory=list)
    replies: dict[str, deque[Reply]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: Iterator[int] = field(default_factory=itertools.count)
    #: Called (in the server's thread) with each send, after it is recorded.
    listeners: list[Callable[[Send], None]] = field(default_factory=list)

    def answer_next(self, device_token: str, *replies: Reply) -> None:
        with self.lock:
            self.replies.setdefault(device_token, deque()).extend(replies)

    def sent_to(self, device_token: str, status: int = 200) -> list[Send]:
        with self.lock:
            return [s for s in self.sends if s.device_token == device_token and s.status == status]

    def revoke_access_tokens(self) -> None:
        with self.lock:
            self.access_tokens.clear()

    def grant(self, form: dict[str, list[str]]) -> Reply:
        if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
            return Reply(400, {"error": "unsupported_grant_type"})
        try:
            claims = jwt.decode(  # type: ignore[no-untyped-call]
                form["assertion"][0], certs=self.public_key_pem, audience=GOOGLE_TOKEN_AUDIENCE
            )
        except (KeyError, ValueError) as error:
            return Reply(400, {"error": "invalid_grant", "error_description": str(error)})
        if claims.get("iss") != self.client_email or claims.get("scope") != FCM_SCOPE:
            return Reply(400, {"error": "invalid_scope", "error_description": "bad iss/scope"})
        with self.lock:
            self.token_requests += 1
            token = f"ya29.loopback-{next(self.counter)}"
            self.access_tokens.add(token)
        body = {"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"}
        return Reply(200, body)

    def send(self, path: str, authorization: str, body: dict[str, Any]) -> Reply:
        if path != f"/v1/projects/{self.project_id}/messages:send":
            return Reply(
                404, {"error": {"code": 404, "message": "Not Found", "status": "NOT_FOUND"}}
            )
        bearer = authorization.removeprefix("Bearer ")
        with self.lock:
            if bearer not in self.access_tokens:
                return fcm_error(401, "UNAUTHENTICATED", "Request had invalid credentials.", "")
        message = body.get("message", {})
        device_token = str(message.get("token", ""))
        with self.lock:
            queue = self.replies.get(device_token)
            reply = queue.popleft() if queue else None
            if reply is None:
                name = f"projects/{self.project_id}/messages/{next(self.counter)}"
                reply = Reply(200, {"name": name})
            send = Send(device_token, message, reply.status)
            self.sends.append(send)
        for listener in self.listeners:
            listener(send)
        return reply


def service_account(project_id: str, client_email: str) -> tuple[dict[str, Any], bytes]:
    """A throwaway service-account key (fresh RSA key) and its public key (for FcmState)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    info = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": uuid.uuid4().hex,
        "private_key": private_pem,
        "client_email": client_email,
        "client_id": "1234567890",
        "token_uri": GOOGLE_TOKEN_AUDIENCE,
    }
    return info, public_pem


def _handler(state: FcmState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/token":
                reply = state.grant(parse_qs(raw.decode()))
            else:
                reply = state.send(
                    self.path, self.headers.get("Authorization", ""), json.loads(raw)
                )
            send_json(self, reply)

    return Handler


@contextlib.contextmanager
def fcm_server(state: FcmState) -> Iterator[FcmState]:
    """Serve `state`; its `url` is the base URL (token endpoint: <url>/token)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        state.url = f"http://127.0.0.1:{server.server_address[1]}"
        yield state
    finally:
        server.shutdown()
        server.server_close()
