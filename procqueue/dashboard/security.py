"""Who may use the dashboard, and how requests prove it.

- Start-up: Supabase Auth (SUPABASE_URL) or an admin secret
  (PROCQUEUE_DASHBOARD_SECRET) is required, unless the dashboard is bound to
  127.0.0.1 with the explicit --local-only flag (then
  whoever can reach this machine's loopback is an admin, named "local").
- Sign-in: with Supabase Auth configured (SUPABASE_URL), an admin's own email
  and password (procqueue/dashboard/supabase_auth.py); else a name (recorded in
  the audit log) and the shared secret. Failures are rate limited
  (procqueue/dashboard/signin_limits.py).
- Session: held in Postgres (procqueue/dashboard/sessions.py); the cookie
  (Starlette's SessionMiddleware, itsdangerous-signed, HttpOnly, SameSite=strict)
  carries its random token, the CSRF token and a flash message, nothing else.
  Sign-out revokes it; it ends PROCQUEUE_DASHBOARD_SESSION_LIFETIME after sign-in.
- CSRF: a random token per session, required on every POST (form field
  `csrf_token` or header `X-CSRF-Token`), compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request

from procqueue.dashboard.sessions import Admin, find_session
from procqueue.dashboard.settings import DashboardSettings, SupabaseAuthConfig
from procqueue.errors import ConfigError

LOCAL_HOST = "127.0.0.1"
LOCAL_ADMIN = Admin("local", "local")
MIN_SECRET_LENGTH = 16
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SESSION_TOKEN = "session"  # the session cookie's field holding the session's token


@dataclass(frozen=True)
class Access:
    """How this dashboard process lets people in."""

    secret: str | None  # the shared secret; None with Supabase Auth or --local-only
    session_key: str
    cookie_secure: bool
    supabase: SupabaseAuthConfig | None = None  # admins sign in with their own accounts
    session_lifetime: timedelta = timedelta(hours=12)

    @property
    def open_locally(self) -> bool:
        """--local-only without a secret or Supabase Auth: everyone is "local"."""
        return self.secret is None and self.supabase is None


def access_for(settings: DashboardSettings, host: str, local_only: bool) -> Access:
    """Check the exposure the dashboard is started with; raise ConfigError if unsafe."""
    if local_only and host != LOCAL_HOST:
        raise ConfigError(
            f"--local-only binds the dashboard to {LOCAL_HOST} only, not {host!r}: drop "
            "--host, or set PROCQUEUE_DASHBOARD_SECRET and drop --local-only"
        )
    supabase = settings.supabase_auth
    configured = settings.dashboard_secret
    secret = configured.get_secret_value() if configured is not None else ""
    if not secret and supabase is None and not local_only:
        raise ConfigError(
            "PROCQUEUE_DASHBOARD_SECRET is not set: set it to a long random string "
            "(e.g. `openssl rand -hex 32`) that admins type to sign in, or configure "
            "Supabase Auth sign-in (SUPABASE_URL, SUPABASE_ANON_KEY), or run "
            f"`procqueue dashboard --local-only` to serve only {LOCAL_HOST} without sign-in"
        )
    if secret and len(secret) < MIN_SECRET_LENGTH:
        raise ConfigError(
            f"PROCQUEUE_DASHBOARD_SECRET is too short: use at least {MIN_SECRET_LENGTH} "
            "characters (e.g. `openssl rand -hex 32`)"
        )
    # The cookie key is derived from a secret every dashboard process shares, so that
    # any of them reads the cookie; with none (JWKS only, --local-only) it is random.
    material = secret
    if not material and supabase is not None and supabase.jwt_secret is not None:
        material = supabase.jwt_secret.get_secret_value()
    key = (
        hmac.new(material.encode(), b"procqueue-dashboard-session", hashlib.sha256).hexdigest()
        if material
        else secrets.token_urlsafe(32)
    )
    return Access(
        None if supabase else (secret or None),
        key,
        settings.dashboard_cookie_secure,
        supabase,
        settings.dashboard_session_lifetime,
    )


def secret_matches(access: Access, given: str) -> bool:
    if access.secret is None:
        return False
    return hmac.compare_digest(given.encode(), access.secret.encode())


async def current_admin(
    request: Request, access: Access, pool: AsyncConnectionPool[Any]
) -> Admin | None:
    """The signed-in admin of this request, or None (a stale token leaves the cookie)."""
    if access.open_locally:
        return LOCAL_ADMIN
    token = request.session.get(SESSION_TOKEN)
    admin = None
    if isinstance(token, str) and token:
        async with pool.connection() as conn:
            admin = await find_session(conn, token, access.session_lifetime)
        if admin is None:
            request.session.pop(SESSION_TOKEN, None)
    return admin


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


def sign_in(request: Request, token: str) -> None:
    """A fresh cookie (new CSRF token) for the session `token` (sessions.open_session)."""
    request.session.clear()
    request.session[SESSION_TOKEN] = token
    csrf_token(request)


def sign_out(request: Request) -> str | None:
    """Clear the cookie; returns the session token to revoke, if there was one."""
    token = request.session.get(SESSION_TOKEN)
    request.session.clear()
    return token if isinstance(token, str) and token else None


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
