"""Who may use the dashboard, and how requests prove it.

- Start-up: an admin secret (PROCQUEUE_DASHBOARD_SECRET) is required, unless the
  dashboard is bound to 127.0.0.1 with the explicit --local-only flag (then
  whoever can reach this machine's loopback is an admin, named "local").
- Sign-in: a name (recorded in the audit log) and the secret; the session is a
  cookie signed with a key derived from the secret (Starlette's
  SessionMiddleware, itsdangerous), HttpOnly, SameSite=strict.
- CSRF: a random token per session, required on every POST (form field
  `csrf_token` or header `X-CSRF-Token`), compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request

from procqueue.errors import ConfigError
from procqueue.settings import Settings

LOCAL_HOST = "127.0.0.1"
LOCAL_ACTOR = "local"
MIN_SECRET_LENGTH = 16
SESSION_MAX_AGE = 12 * 3600
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True)
class Access:
    """How this dashboard process lets people in."""

    secret: str | None  # None: --local-only without a secret, everyone is "local"
    session_key: str
    cookie_secure: bool

    @property
    def open_locally(self) -> bool:
        return self.secret is None


def access_for(settings: Settings, host: str, local_only: bool) -> Access:
    """Check the exposure the dashboard is started with; raise ConfigError if unsafe."""
    if local_only and host != LOCAL_HOST:
        raise ConfigError(
            f"--local-only binds the dashboard to {LOCAL_HOST} only, not {host!r}: drop "
            "--host, or set PROCQUEUE_DASHBOARD_SECRET and drop --local-only"
        )
    configured = settings.dashboard_secret
    if configured is None or not configured.get_secret_value():
        if not local_only:
            raise ConfigError(
                "PROCQUEUE_DASHBOARD_SECRET is not set: set it to a long random string "
                "(e.g. `openssl rand -hex 32`) that admins type to sign in, or run "
                f"`procqueue dashboard --local-only` to serve only {LOCAL_HOST} without sign-in"
            )
        return Access(None, secrets.token_urlsafe(32), settings.dashboard_cookie_secure)
    secret = configured.get_secret_value()
    if len(secret) < MIN_SECRET_LENGTH:
        raise ConfigError(
            f"PROCQUEUE_DASHBOARD_SECRET is too short: use at least {MIN_SECRET_LENGTH} "
            "characters (e.g. `openssl rand -hex 32`)"
        )
    # The cookie key is derived from the secret: changing the secret signs everyone out.
    key = hmac.new(secret.encode(), b"procqueue-dashboard-session", hashlib.sha256).hexdigest()
    return Access(secret, key, settings.dashboard_cookie_secure)


def secret_matches(access: Access, given: str) -> bool:
    if access.secret is None:
        return False
    return hmac.compare_digest(given.encode(), access.secret.encode())


def current_user(request: Request, access: Access) -> str | None:
    if access.open_locally:
        return LOCAL_ACTOR
    user = request.session.get("user")
    return user if isinstance(user, str) and user else None


def csrf_token(request: Request) -> str:
    """This session's CSRF token, made on first use."""
    token = request.session.get("csrf")
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def csrf_valid(request: Request, given: str | None) -> bool:
    expected = request.session.get("csrf")
    if not isinstance(expected, str) or not expected or not given:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def sign_in(request: Request, name: str) -> None:
    """A fresh session (new CSRF token) for the signed-in admin."""
    request.session.clear()
    request.session["user"] = name
    csrf_token(request)


def sign_out(request: Request) -> None:
    request.session.clear()


def safe_next(target: str | None) -> str:
    """Where to go after sign-in: a local path only (no open redirect)."""
    if not target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
