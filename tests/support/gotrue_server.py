"""A loopback HTTP server speaking the two Supabase Auth (GoTrue) endpoints the
dashboard's sign-in uses:

    POST /auth/v1/token?grant_type=password      email + password -> session
    GET  /auth/v1/.well-known/jwks.json           the project's public signing keys

It checks the `apikey` header against the project's anon key and answers as
GoTrue does (400 `invalid_credentials`, 401 for a wrong API key). Access
tokens are real JWTs with Supabase's claims, signed HS256 with the project's
JWT secret or ES256 with a key generated here and published in the JWKS. A
test can tamper with the next tokens: other claims (an `exp` in the past, a
wrong `aud`), or a signature by a key the project does not have (forged).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

Signing = Literal["HS256", "ES256"]


@dataclass
class User:
    email: str
    password: str
    app_metadata: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class GoTrueState:
    url: str = ""
    anon_key: str = field(default_factory=lambda: "anon-" + secrets.token_hex(16))
    jwt_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    signing: Signing = "HS256"
    es_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    es_kid: str = field(default_factory=lambda: uuid.uuid4().hex)
    users: dict[str, User] = field(default_factory=dict)
    claim_overrides: dict[str, Any] = field(default_factory=dict)  # merged into next tokens
    forge: bool = False  # sign the next tokens with a key the project does not have
    token_requests: int = 0  # POSTs to /auth/v1/token, answered or refused
    jwks_reads: int = 0

    def add_user(self, email: str, password: str, **app_metadata: Any) -> User:
        user = User(email, password, {"provider": "email", "providers": ["email"], **app_metadata})
        self.users[email] = user
        return user

    def jwks(self) -> dict[str, Any]:
        public = ECAlgorithm.to_jwk(self.es_key.public_key(), as_dict=True)
        return {"keys": [{**public, "kid": self.es_kid, "alg": "ES256", "use": "sig"}]}

    def access_token(self, user: User) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": f"{self.url}/auth/v1",
            "sub": user.id,
            "aud": "authenticated",
            "exp": now + 3600,
            "iat": now,
            "email": user.email,
            "phone": "",
            "app_metadata": user.app_metadata,
            "user_metadata": {},
            "role": "authenticated",
            "aal": "aal1",
            "amr": [{"method": "password", "timestamp": now}],
            "session_id": str(uuid.uuid4()),
            "is_anonymous": False,
            **self.claim_overrides,
        }
        if self.signing == "HS256":
            secret = secrets.token_hex(32) if self.forge else self.jwt_secret
            return jwt.encode(claims, secret, algorithm="HS256")
        key = ec.generate_private_key(ec.SECP256R1()) if self.forge else self.es_key
        return jwt.encode(claims, key, algorithm="ES256", headers={"kid": self.es_kid})


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        state = self.server.state
        if urlsplit(self.path).path == "/auth/v1/.well-known/jwks.json":
            state.jwks_reads += 1
            self._reply(200, state.jwks())
        else:
            self._reply(404, {"code": 404, "msg": "Not found"})

    def do_POST(self) -> None:
        state = self.server.state
        parts = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if parts.path != "/auth/v1/token":
            self._reply(404, {"code": 404, "msg": "Not found"})
            return
        state.token_requests += 1
        if self.headers.get("apikey") != state.anon_key:
            self._reply(401, {"message": "Invalid API key"})
            return
        if parse_qs(parts.query).get("grant_type") != ["password"]:
            self._reply(400, {"code": 400, "error_code": "validation_failed", "msg": "bad grant"})
            return
        given = json.loads(body or b"{}")
        user = state.users.get(str(given.get("email", "")))
        if user is None or not secrets.compare_digest(
            str(given.get("password", "")).encode(), user.password.encode()
        ):
            self._reply(
                400,
                {
                    "code": 400,
                    "error_code": "invalid_credentials",
                    "msg": "Invalid login credentials",
                },
            )
            return
        self._reply(
            200,
            {
                "access_token": state.access_token(user),
                "token_type": "bearer",
                "expires_in": 3600,
                "expires_at": int(time.time()) + 3600,
                "refresh_token": secrets.token_urlsafe(12),
                "user": {
                    "id": user.id,
                    "aud": "authenticated",
                    "email": user.email,
                    "app_metadata": user.app_metadata,
                },
            },
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: GoTrueState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


@contextlib.contextmanager
def gotrue_server(signing: Signing = "HS256") -> Iterator[GoTrueState]:
    """A running GoTrue look-alike on a free loopback port; yields its state."""
    state = GoTrueState(signing=signing)
    server = _Server(state)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
