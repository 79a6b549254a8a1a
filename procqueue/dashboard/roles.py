"""Dashboard roles: an *admin* may act (retry, cancel, ...), a *viewer* sees every
page and changes nothing.

With Supabase Auth the role comes from the access token's claims (docs/dashboard.md,
"Roles"): `app_metadata.procqueue_role` = "admin" or "viewer" decides when present;
otherwise the admin claim (PROCQUEUE_DASHBOARD_ADMIN_CLAIM, default
`app_metadata.role=admin`, as before roles existed) makes an admin and the optional
viewer claim (PROCQUEUE_DASHBOARD_VIEWER_CLAIM) a viewer. Anyone else is refused.
The shared secret and --local-only sign in admins only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ADMIN = "admin"
VIEWER = "viewer"
ROLES = (ADMIN, VIEWER)
#: The claim that names the dashboard role outright; only `app_metadata` is safe
#: (users can change their own `user_metadata`).
ROLE_CLAIM = ("app_metadata", "procqueue_role")
#: The one line a viewer meets when posting an action (answered 403).
READ_ONLY = (
    "Your role is viewer (read-only): nothing was changed. Ask an admin to do it, or to "
    "give your account app_metadata.procqueue_role = 'admin'."
)


def claim_value(claims: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = claims
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


@dataclass(frozen=True)
class Claim:
    """`<dotted path>=<value>`: met when the claim at the path is the value or, for
    a list, contains it."""

    path: tuple[str, ...]
    value: str

    @classmethod
    def parse(cls, text: str) -> Claim:
        path, value = text.split("=", 1)
        return cls(tuple(path.split(".")), value)

    @property
    def name(self) -> str:
        return ".".join(self.path)

    def met_by(self, claims: dict[str, Any]) -> bool:
        found = claim_value(claims, self.path)
        return found == self.value or (isinstance(found, list) and self.value in found)

    def __str__(self) -> str:
        return f"{self.name} = {self.value!r}"


def role_of(claims: dict[str, Any], admin: Claim, viewer: Claim | None) -> str | None:
    """The dashboard role these verified claims give, or None (not let in)."""
    named = claim_value(claims, ROLE_CLAIM)
    if named in ROLES:
        return str(named)
    if admin.met_by(claims):
        return ADMIN
    if viewer is not None and viewer.met_by(claims):
        return VIEWER
    return None


def why_not(claims: dict[str, Any], admin: Claim, viewer: Claim | None) -> str:
    """For the audit log: what the claims say instead of a role."""
    found = [
        f"{'.'.join(ROLE_CLAIM)} is {str(claim_value(claims, ROLE_CLAIM))[:60]!r}",
        f"{admin.name} is {str(claim_value(claims, admin.path))[:60]!r}, not {admin.value!r}",
    ]
    if viewer is not None:
        found.append(f"{viewer.name} is not {viewer.value!r}")
    return "no dashboard role: " + "; ".join(found)
