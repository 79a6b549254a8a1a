"""Dashboard sessions, held in Postgres (migration 0015; the role: 0021).

The session cookie carries a random token; the table keeps its SHA-256 only, so
a copy of the table signs nobody in. Sign-out deletes the row: a replayed cookie
then finds nothing. A session ends `lifetime` after sign-in however active it is
(checked by every lookup); expired rows are deleted at each sign-in.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from procqueue.dashboard.queries import query
from procqueue.dashboard.roles import ADMIN

Connection = psycopg.AsyncConnection[Any]


@dataclass(frozen=True)
class Admin:
    """Who a session belongs to: an admin, or a viewer (role "viewer", read-only)."""

    name: str  # what the pages show
    actor: str  # what the audit log records as who acted
    user_id: str | None = None  # the Supabase Auth user id (sub)
    email: str | None = None
    role: str = ADMIN  # procqueue/dashboard/roles.py

    @property
    def can_act(self) -> bool:
        """Whether this user may change anything (every POST action)."""
        return self.role == ADMIN


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def open_session(
    conn: Connection, admin: Admin, remote_addr: str | None, lifetime: timedelta
) -> str:
    """A new session for `admin`; returns the token for the cookie."""
    token = secrets.token_urlsafe(32)
    async with conn.transaction():
        await conn.execute(query("dashboard_sessions_prune"), {"lifetime": lifetime})
        await conn.execute(
            query("dashboard_session_open"),
            {
                "token_hash": _digest(token),
                "actor": admin.actor,
                "user_id": admin.user_id,
                "email": admin.email,
                "remote_addr": remote_addr,
                "role": admin.role,
            },
        )
    return token


async def find_session(conn: Connection, token: str, lifetime: timedelta) -> Admin | None:
    """The admin of a live session, or None (unknown, signed out or too old)."""
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(
        query("dashboard_session_find"), {"token_hash": _digest(token), "lifetime": lifetime}
    )
    row = await cursor.fetchone()
    if row is None:
        return None
    return Admin(
        row["email"] or row["actor"], row["actor"], row["user_id"], row["email"], row["role"]
    )


async def revoke_session(conn: Connection, token: str) -> None:
    await conn.execute(query("dashboard_session_revoke"), {"token_hash": _digest(token)})
