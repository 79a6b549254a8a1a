"""Admins and viewers sign in with their Supabase Auth accounts.

The dashboard asks GoTrue for a session with the email and password
(`POST {SUPABASE_URL}/auth/v1/token?grant_type=password`, the anon key as
`apikey`) and trusts the access token only once it has verified it itself:
HS256 with the project's JWT secret, or RS256/ES256 with a key from the
project's JWKS (`/auth/v1/.well-known/jwks.json`, read again at most once a
minute for an unknown key id); `exp`, `aud` = authenticated and `iss` =
`{SUPABASE_URL}/auth/v1` are required. Only users whose claims give them a
dashboard role (procqueue/dashboard/roles.py: admin or viewer) are admitted.
The token, the password and the keys are never logged or recorded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt

from procqueue.dashboard.roles import ROLE_CLAIM, role_of, why_not
from procqueue.dashboard.sessions import Admin
from procqueue.dashboard.settings import SupabaseAuthConfig
from procqueue.errors import ProcqueueError

log = logging.getLogger(__name__)

AUDIENCE = "authenticated"
ASYMMETRIC = ("RS256", "ES256")
JWKS_REREAD = 60.0  # seconds: the least time between two JWKS reads


class SignInRefused(ProcqueueError):
    """Supabase Auth or the dashboard refused these credentials. `str()` is the
    reason for the audit log, `shown` the line for the sign-in page."""

    def __init__(
        self, reason: str, shown: str, user_id: str | None = None, email: str | None = None
    ) -> None:
        super().__init__(reason)
        self.shown = shown
        self.user_id = user_id
        self.email = email


class AuthUnavailable(ProcqueueError):
    """Supabase Auth cannot answer now (down, rate limiting, refusing our key)."""


WRONG_CREDENTIALS = "Wrong email or password: try again."
UNVERIFIED = (
    "Supabase Auth's answer could not be verified: ask the operator to check "
    "SUPABASE_URL and SUPABASE_JWT_SECRET."
)


def _unverified(reason: str) -> SignInRefused:
    return SignInRefused(f"token could not be verified: {reason}", UNVERIFIED)


class SupabaseAuth:
    """Sign-in against one Supabase project; keeps the project's JWKS keys."""

    def __init__(
        self, config: SupabaseAuthConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._keys_read_at: float | None = None
        self._keys_lock = asyncio.Lock()

    async def sign_in(self, email: str, password: str) -> Admin:
        """The admin these credentials belong to; SignInRefused or AuthUnavailable."""
        if not email or not password:
            raise SignInRefused("no email or password given", WRONG_CREDENTIALS)
        token = await self._password_grant(email, password)
        claims = await self.verify(token)
        return self._admin(claims)

    async def _request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        url = self.config.url + path
        timeout = aiohttp.ClientTimeout(total=self.config.timeout)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.request(method, url, **kwargs) as response:
                    return response.status, await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            log.warning("Supabase Auth at %s: %s", self.config.url, type(error).__name__)
            raise AuthUnavailable(
                "Supabase Auth does not answer: try again in a minute "
                "(the operator can check SUPABASE_URL)"
            ) from None

    async def _password_grant(self, email: str, password: str) -> str:
        status, body = await self._request(
            "POST",
            "/auth/v1/token?grant_type=password",
            json={"email": email, "password": password},
            headers={"apikey": self.config.anon_key.get_secret_value()},
        )
        body = body if isinstance(body, dict) else {}
        if status == 200 and isinstance(body.get("access_token"), str):
            return str(body["access_token"])
        if status in (400, 422):
            code = str(body.get("error_code") or body.get("error") or status)[:60]
            if code in ("invalid_credentials", "invalid_grant"):
                raise SignInRefused("wrong email or password", WRONG_CREDENTIALS)
            raise SignInRefused(
                f"Supabase Auth refused the sign-in ({code})",
                f"Supabase Auth refused the sign-in ({code}): check the account.",
            )
        if status == 429:
            raise AuthUnavailable("Supabase Auth is limiting sign-ins: try again in a minute")
        if status in (401, 403):
            log.error("Supabase Auth refused the dashboard's SUPABASE_ANON_KEY (HTTP %s)", status)
            raise AuthUnavailable(
                "Supabase Auth refused the dashboard's API key: try again later "
                "(the operator can check SUPABASE_ANON_KEY)"
            )
        log.warning("Supabase Auth answered HTTP %s to a sign-in", status)
        raise AuthUnavailable(f"Supabase Auth answered HTTP {status}: try again in a minute")

    async def verify(self, token: str) -> dict[str, Any]:
        """The claims of an access token this project issued; SignInRefused if not."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _unverified("not a JWT") from None
        algorithm = header.get("alg")
        key: Any
        if algorithm == "HS256":
            if self.config.jwt_secret is None:
                raise _unverified("signed with HS256 but SUPABASE_JWT_SECRET is not set")
            key = self.config.jwt_secret.get_secret_value()
        elif algorithm in ASYMMETRIC:
            key = await self._public_key(str(header.get("kid")), str(algorithm))
        else:
            raise _unverified(f"signed with {str(algorithm)[:20]!r}, not HS256, RS256 or ES256")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[str(algorithm)],
                audience=AUDIENCE,
                issuer=self.config.issuer,
                options={"require": ["exp", "sub", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise _unverified("expired") from None
        except jwt.InvalidAudienceError:
            raise _unverified(f"audience (aud) is not {AUDIENCE!r}") from None
        except jwt.InvalidIssuerError:
            raise _unverified(f"issuer (iss) is not {self.config.issuer!r}") from None
        except jwt.InvalidSignatureError:
            raise _unverified("bad signature") from None
        except jwt.PyJWTError as error:
            raise _unverified(type(error).__name__) from None
        return claims

    async def _public_key(self, kid: str, algorithm: str) -> Any:
        async with self._keys_lock:
            now = self._clock()
            stale = self._keys_read_at is None or now - self._keys_read_at >= JWKS_REREAD
            if kid not in self._keys and stale:
                self._keys = await self._read_keys()
                self._keys_read_at = now
        found = self._keys.get(kid)
        if found is None:
            raise _unverified(f"its key id {kid[:40]!r} is not in the project's JWKS")
        if found.algorithm_name != algorithm:
            raise _unverified(f"key {kid[:40]!r} is for {found.algorithm_name}, not {algorithm}")
        return found.key

    async def _read_keys(self) -> dict[str, jwt.PyJWK]:
        status, body = await self._request("GET", "/auth/v1/.well-known/jwks.json")
        if status != 200 or not isinstance(body, dict):
            raise AuthUnavailable(f"Supabase Auth's JWKS answered HTTP {status}: try again later")
        keys: dict[str, jwt.PyJWK] = {}
        for data in body.get("keys") or []:
            try:
                key = jwt.PyJWK(data)
            except jwt.PyJWTError:
                continue  # a key type or algorithm the dashboard does not verify with
            if key.key_id:
                keys[key.key_id] = key
        return keys

    def _admin(self, claims: dict[str, Any]) -> Admin:
        user_id = str(claims["sub"])
        email = claims.get("email") if isinstance(claims.get("email"), str) else None
        admin, viewer = self.config.admin, self.config.viewer
        role = role_of(claims, admin, viewer)
        if role is None:
            raise SignInRefused(
                why_not(claims, admin, viewer),
                "This account is not a dashboard admin or viewer: an admin can give it "
                f"{'.'.join(ROLE_CLAIM)} = 'admin' or 'viewer' (or {admin}).",
                user_id=user_id,
                email=email,
            )
        actor = f"{email} ({user_id})" if email else user_id
        return Admin(email or user_id, actor, user_id, email, role)
