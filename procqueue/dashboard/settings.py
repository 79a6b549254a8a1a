"""The dashboard's settings section (docs/dashboard.md): how admins sign in. Without
a secret or Supabase Auth the dashboard only starts bound to 127.0.0.1 with
--local-only. It hands out `supabase_auth`, the config the sign-in takes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from pydantic import Field, SecretStr, field_validator

from procqueue.dashboard.roles import Claim
from procqueue.errors import ConfigError
from procqueue.settings import Section, bare_env


@dataclass(frozen=True)
class SupabaseAuthConfig:
    """How the dashboard signs admins in with their Supabase Auth accounts
    (procqueue/dashboard/supabase_auth.py)."""

    url: str  # the project URL, https://<ref>.supabase.co
    anon_key: SecretStr
    jwt_secret: SecretStr | None  # None: asymmetric keys only, read from the JWKS
    admin: Claim  # a claim that makes an admin (procqueue/dashboard/roles.py)
    viewer: Claim | None = None  # a claim that makes a viewer (read-only)
    timeout: float = 10.0

    @property
    def issuer(self) -> str:
        return f"{self.url}/auth/v1"


class DashboardSettings(Section):
    # The admins' shared sign-in secret.
    dashboard_secret: SecretStr | None = None
    dashboard_cookie_secure: bool = False  # True behind HTTPS: the session cookie is Secure
    # Absolute: a session ends this long after sign-in, however active (checked server-side).
    dashboard_session_lifetime: timedelta = Field(
        default=timedelta(hours=12), gt=timedelta(0), le=timedelta(days=30)
    )
    # Supabase Auth sign-in: set SUPABASE_URL and SUPABASE_ANON_KEY and admins sign in
    # as themselves; the shared secret is then not accepted.
    supabase_url: str | None = Field(default=None, validation_alias=bare_env("SUPABASE_URL"))
    supabase_anon_key: SecretStr | None = Field(
        default=None, validation_alias=bare_env("SUPABASE_ANON_KEY")
    )
    supabase_jwt_secret: SecretStr | None = Field(
        default=None, validation_alias=bare_env("SUPABASE_JWT_SECRET")
    )
    dashboard_admin_claim: str = "app_metadata.role=admin"
    # Also let in, read-only, users with this claim (besides app_metadata.procqueue_role).
    dashboard_viewer_claim: str | None = None

    @field_validator("supabase_url")
    @classmethod
    def _check_supabase_url(cls, value: str | None) -> str | None:
        if value and not re.fullmatch(r"https?://[^\s/@]+/?", value):
            raise ValueError("must be the project URL alone, like https://<ref>.supabase.co")
        return value

    @field_validator("dashboard_admin_claim", "dashboard_viewer_claim")
    @classmethod
    def _check_claim(cls, value: str | None) -> str | None:
        if value and not re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*=\S+", value):
            raise ValueError("must be <claim path>=<value>, like app_metadata.role=admin")
        return value

    @property
    def supabase_auth(self) -> SupabaseAuthConfig | None:
        """None: no SUPABASE_URL (the dashboard falls back to its shared secret)."""
        if not self.supabase_url:
            return None
        if self.supabase_anon_key is None or not self.supabase_anon_key.get_secret_value():
            raise ConfigError(
                "SUPABASE_URL is set but SUPABASE_ANON_KEY is not: set it to the project's "
                "anon key (Supabase: Project Settings > API), or unset SUPABASE_URL"
            )
        viewer = self.dashboard_viewer_claim
        return SupabaseAuthConfig(
            url=self.supabase_url.rstrip("/"),
            anon_key=self.supabase_anon_key,
            jwt_secret=self.supabase_jwt_secret or None,
            admin=Claim.parse(self.dashboard_admin_claim),
            viewer=Claim.parse(viewer) if viewer else None,
        )
