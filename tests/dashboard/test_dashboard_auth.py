"""Dashboard sign-in (issue 13, points 5 and 6): admins sign in with their own
Supabase Auth accounts (tokens verified by the dashboard, HS256 or ES256 from
the JWKS, against a loopback GoTrue issuing real signed tokens); sign-in is rate
limited per address and globally, without an audit row per refused attempt
beyond the limit; sessions live server-side, so sign-out revokes a replayed
cookie and an absolute lifetime ends every session; the shared secret still
works where Supabase Auth is not configured."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest

from procqueue.dashboard.app import SESSION_COOKIE, create_app
from procqueue.dashboard.security import access_for
from procqueue.errors import ConfigError
from procqueue.features import Settings
from tests.conftest import make_settings
from tests.support.dashboard import audit_rows, csrf_from, free_port, post_login, sign_in
from tests.support.gotrue_server import GoTrueState, Signing, gotrue_server

PASSWORD = "correct horse " + uuid.uuid4().hex
SECRET = "fallback-secret-" + uuid.uuid4().hex


class Clock:
    """The sign-in limiter's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module", params=["HS256", "ES256"])
def gotrue(request: pytest.FixtureRequest) -> Iterator[GoTrueState]:
    signing: Signing = request.param
    with gotrue_server(signing) as state:
        yield state


@pytest.fixture
def fresh_tokens(gotrue: GoTrueState) -> Iterator[GoTrueState]:
    """The GoTrue server with untampered tokens again after the test."""
    yield gotrue
    gotrue.claim_overrides.clear()
    gotrue.forge = False


def supabase_settings(database: str, es_url: str, gotrue: GoTrueState, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "supabase_url": gotrue.url,
        "supabase_anon_key": gotrue.anon_key,
        "supabase_jwt_secret": gotrue.jwt_secret if gotrue.signing == "HS256" else None,
        **extra,
    }
    return make_settings(database, es_url, **values)


AppClients = Callable[..., httpx.AsyncClient]  # (address="127.0.0.1") -> client


@contextlib.asynccontextmanager
async def dashboard(settings: Settings, clock: Clock | None = None) -> AsyncIterator[AppClients]:
    """One dashboard app; yields a maker of HTTP clients, each from its own address."""
    app = create_app(settings, access_for(settings, "0.0.0.0", False), clock=clock or Clock())
    async with app.router.lifespan_context(app), contextlib.AsyncExitStack() as clients:

        def client(address: str = "127.0.0.1") -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=app, client=(address, 50000))
            http = httpx.AsyncClient(transport=transport, base_url="http://testserver")
            clients.push_async_callback(http.aclose)
            return http

        yield client


async def sign_in_as(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await post_login(client, email=email, password=password)


def new_email() -> str:
    return f"admin-{uuid.uuid4().hex[:8]}@example.com"


def secrets_of(gotrue: GoTrueState) -> list[str]:
    return [PASSWORD, gotrue.anon_key, gotrue.jwt_secret]


async def sign_in_rows(database: str, email: str) -> list[dict[str, Any]]:
    return [
        row
        for row in await audit_rows(database)
        if row["action"].startswith("sign_") and email in row["actor"]
    ]


async def test_an_admin_signs_in_and_the_audit_log_names_them(
    database: str, es_url: str, gotrue: GoTrueState
) -> None:
    email = new_email()
    user = gotrue.add_user(email, PASSWORD, role="admin")
    async with dashboard(supabase_settings(database, es_url, gotrue)) as client:
        http = client()
        form = await http.get("/login")
        assert "Email" in form.text and "Password" in form.text and "Admin secret" not in form.text
        response = await sign_in_as(http, email, PASSWORD)
        assert response.status_code == 303, response.text
        overview = await http.get("/")
        assert overview.status_code == 200 and email in overview.text
        audit_page = (await http.get("/audit")).text
        assert user.id in audit_page
    rows = [row for row in await audit_rows(database) if row["action"] == "sign_in"]
    assert rows[-1]["target"] == {"user_id": user.id, "email": email}
    assert email in rows[-1]["actor"] and user.id in rows[-1]["actor"]
    everything = json.dumps(await audit_rows(database), default=str)
    for secret in secrets_of(gotrue):
        assert secret not in everything and secret not in audit_page


async def test_a_user_without_the_admin_claim_is_refused(
    database: str, es_url: str, gotrue: GoTrueState
) -> None:
    email = new_email()
    user = gotrue.add_user(email, PASSWORD, role="editor")
    async with dashboard(supabase_settings(database, es_url, gotrue)) as client:
        http = client()
        response = await sign_in_as(http, email, PASSWORD)
        assert response.status_code == 401
        assert "not a dashboard admin" in response.text
        assert (await http.get("/")).status_code == 303
    [refused] = await sign_in_rows(database, email)
    assert refused["action"] == "sign_in_refused"
    assert refused["target"] == {"user_id": user.id, "email": email}
    assert "app_metadata.role" in refused["outcome"]


async def test_the_admin_claim_is_configurable(
    database: str, es_url: str, gotrue: GoTrueState
) -> None:
    settings = supabase_settings(
        database, es_url, gotrue, dashboard_admin_claim="app_metadata.roles=queue-admin"
    )
    admin, other = new_email(), new_email()
    gotrue.add_user(admin, PASSWORD, roles=["support", "queue-admin"])
    gotrue.add_user(other, PASSWORD, role="admin")
    reads = gotrue.jwks_reads
    async with dashboard(settings) as client:
        assert (await sign_in_as(client(), admin, PASSWORD)).status_code == 303
        assert (await sign_in_as(client(), other, PASSWORD)).status_code == 401
    # ES256: the JWKS is read once and its key kept; HS256 needs no JWKS.
    assert gotrue.jwks_reads - reads == (1 if gotrue.signing == "ES256" else 0)


async def test_a_wrong_password_is_refused(database: str, es_url: str, gotrue: GoTrueState) -> None:
    email = new_email()
    gotrue.add_user(email, PASSWORD, role="admin")
    async with dashboard(supabase_settings(database, es_url, gotrue)) as client:
        http = client()
        response = await sign_in_as(http, email, "not the password")
        assert response.status_code == 401
        assert "Wrong email or password" in response.text
        assert (await http.get("/")).status_code == 303
    [refused] = await sign_in_rows(database, email)
    assert refused["outcome"] == "wrong email or password"
    assert "not the password" not in json.dumps(refused, default=str)


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ({"exp": 1_600_000_000}, "expired"),
        ({"aud": "anon"}, "audience"),
        ({"iss": "http://127.0.0.1:9/auth/v1"}, "issuer"),
        ("forge", "signature"),
    ],
)
async def test_a_token_the_dashboard_cannot_verify_is_refused(
    database: str,
    es_url: str,
    fresh_tokens: GoTrueState,
    tamper: dict[str, Any] | str,
    reason: str,
) -> None:
    gotrue = fresh_tokens
    email = new_email()
    gotrue.add_user(email, PASSWORD, role="admin")
    if tamper == "forge":
        gotrue.forge = True
    else:
        assert isinstance(tamper, dict)
        gotrue.claim_overrides.update(tamper)
    async with dashboard(supabase_settings(database, es_url, gotrue)) as client:
        http = client()
        response = await sign_in_as(http, email, PASSWORD)
        assert response.status_code == 401, response.text
        assert "could not be verified" in response.text
        assert (await http.get("/")).status_code == 303
    [refused] = await sign_in_rows(database, email)
    assert reason in refused["outcome"].lower()


async def test_an_hs256_token_is_refused_without_the_jwt_secret(database: str, es_url: str) -> None:
    with gotrue_server("HS256") as gotrue:
        email = new_email()
        gotrue.add_user(email, PASSWORD, role="admin")
        settings = supabase_settings(database, es_url, gotrue, supabase_jwt_secret=None)
        async with dashboard(settings) as client:
            response = await sign_in_as(client(), email, PASSWORD)
            assert response.status_code == 401
    [refused] = await sign_in_rows(database, email)
    assert "SUPABASE_JWT_SECRET" in refused["outcome"]


async def test_supabase_auth_down_answers_503_in_one_line(database: str, es_url: str) -> None:
    settings = make_settings(
        database,
        es_url,
        supabase_url=f"http://127.0.0.1:{free_port()}",
        supabase_anon_key="anon-key-" + uuid.uuid4().hex,
    )
    async with dashboard(settings) as client:
        response = await sign_in_as(client(), new_email(), PASSWORD)
    assert response.status_code == 503
    assert "Supabase Auth" in response.text and "try again" in response.text
    assert PASSWORD not in response.text


def test_supabase_url_without_the_anon_key_is_one_clear_line(database: str, es_url: str) -> None:
    settings = make_settings(database, es_url, supabase_url="https://abc.supabase.co")
    with pytest.raises(ConfigError, match="SUPABASE_ANON_KEY is not") as error:
        access_for(settings, "0.0.0.0", False)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("dashboard_admin_claim", "role", "PROCQUEUE_DASHBOARD_ADMIN_CLAIM is invalid"),
        ("supabase_url", "https://u:hunter2@abc.supabase.co/x", "SUPABASE_URL is invalid"),
        ("dashboard_session_lifetime", "P90D", "PROCQUEUE_DASHBOARD_SESSION_LIFETIME is invalid"),
    ],
)
def test_wrong_sign_in_settings_are_one_clear_line(
    database: str, es_url: str, setting: str, value: str, says: str
) -> None:
    with pytest.raises(ConfigError, match=says) as error:
        make_settings(database, es_url, **{setting: value})
    assert "\n" not in str(error.value) and "hunter2" not in str(error.value)


async def test_sign_in_is_rate_limited_per_address_with_backoff(
    database: str, es_url: str, gotrue: GoTrueState
) -> None:
    email = new_email()
    gotrue.add_user(email, PASSWORD, role="admin")
    clock = Clock()
    async with dashboard(supabase_settings(database, es_url, gotrue), clock) as client:
        attacker = client("203.0.113.7")
        for _ in range(5):
            assert (await sign_in_as(attacker, email, "guess")).status_code == 401
        before = len(await audit_rows(database))
        requests = gotrue.token_requests
        for password in ["guess"] * 50 + [PASSWORD]:
            response = await sign_in_as(attacker, email, password)
            assert response.status_code == 429
        assert "too many failed sign-ins" in response.text and "\n" not in response.text.strip()
        assert response.headers["retry-after"] == "60"
        assert gotrue.token_requests == requests  # a locked address is not even checked
        assert len(await audit_rows(database)) == before  # and writes nothing
        # Another address is not locked out.
        assert (await sign_in_as(client("198.51.100.1"), email, PASSWORD)).status_code == 303

        clock.now += 61
        assert (await sign_in_as(attacker, email, "guess")).status_code == 401
        locked = await sign_in_as(attacker, email, PASSWORD)
        assert locked.status_code == 429 and locked.headers["retry-after"] == "120"
        clock.now += 121
        assert (await sign_in_as(attacker, email, PASSWORD)).status_code == 303
    rows = await sign_in_rows(database, email)
    assert [row["action"] for row in rows].count("sign_in_locked") == 2
    # 6 refusals, 2 lock-outs, 2 sign-ins: no row for any of the 52 attempts answered 429.
    assert len(rows) == 6 + 2 + 2


async def test_sign_in_is_rate_limited_globally(
    database: str, es_url: str, gotrue: GoTrueState
) -> None:
    email = new_email()
    gotrue.add_user(email, PASSWORD, role="admin")
    clock = Clock()
    before = len(await audit_rows(database))
    async with dashboard(supabase_settings(database, es_url, gotrue), clock) as client:
        for number in range(200):
            response = await sign_in_as(client(f"10.1.{number // 250}.{number % 250}"), email, "x")
            assert response.status_code in (401, 429)
        assert response.status_code == 429
        assert "too many failed sign-ins" in response.text
        written = len(await audit_rows(database)) - before
        assert written <= 61, written  # 60 refusals a minute and one lock-out row
        clock.now += 61
        assert (await sign_in_as(client("192.0.2.50"), email, PASSWORD)).status_code == 303


async def test_sign_out_revokes_the_session_for_a_replayed_cookie(
    database: str, es_url: str, gotrue: GoTrueState
) -> None:
    email = new_email()
    gotrue.add_user(email, PASSWORD, role="admin")
    async with dashboard(supabase_settings(database, es_url, gotrue)) as client:
        http = client()
        assert (await sign_in_as(http, email, PASSWORD)).status_code == 303
        stolen = http.cookies[SESSION_COOKIE]
        replay = client()
        replay.cookies.set(SESSION_COOKIE, stolen)
        assert (await replay.get("/")).status_code == 200
        token = csrf_from((await http.get("/")).text)
        assert (await http.post("/logout", data={"csrf_token": token})).status_code == 303
        assert (await http.get("/")).status_code == 303
        replayed = client()
        replayed.cookies.set(SESSION_COOKIE, stolen)
        assert (await replayed.get("/")).status_code == 303
        assert (await replayed.get("/overview/panel")).status_code == 401
    assert [row["action"] for row in await sign_in_rows(database, email)][-1] == "sign_out"


def session_token(cookie: str) -> str:
    """The session id inside Starlette's signed session cookie (base64 JSON, then signature)."""
    payload = cookie.split(".", 1)[0]
    data = json.loads(base64.b64decode(payload + "=" * (-len(payload) % 4)))
    token = data["session"]
    assert isinstance(token, str) and len(token) >= 40
    assert set(data) <= {"session", "csrf", "flash"}  # no name, no identity in the cookie
    return token


async def test_sessions_are_stored_as_hashes_and_end_after_their_lifetime(
    database: str, es_url: str, gotrue: GoTrueState
) -> None:
    email = new_email()
    gotrue.add_user(email, PASSWORD, role="admin")
    settings = supabase_settings(
        database, es_url, gotrue, dashboard_session_lifetime=timedelta(hours=1)
    )
    async with (
        dashboard(settings) as client,
        await psycopg.AsyncConnection.connect(database, autocommit=True) as conn,
    ):
        http = client()
        assert (await sign_in_as(http, email, PASSWORD)).status_code == 303
        token = session_token(http.cookies[SESSION_COOKIE])
        digest = hashlib.sha256(token.encode()).digest()
        stored = await (
            await conn.execute(
                "SELECT * FROM procqueue.dashboard_sessions WHERE email = %s", [email]
            )
        ).fetchall()
        assert len(stored) == 1 and digest in stored[0] and token not in map(str, stored[0])

        async def age(minutes: int) -> None:
            await conn.execute(
                "UPDATE procqueue.dashboard_sessions "
                "SET created_at = now() - make_interval(mins => %s) WHERE token_hash = %s",
                [minutes, digest],
            )

        await age(59)
        assert (await http.get("/")).status_code == 200
        await age(61)
        assert (await http.get("/")).status_code == 303
        # Expired sessions are pruned at the next sign-in.
        assert (await sign_in_as(client(), email, PASSWORD)).status_code == 303
        gone = await (
            await conn.execute(
                "SELECT count(*) FROM procqueue.dashboard_sessions WHERE token_hash = %s", [digest]
            )
        ).fetchone()
        assert gone == (0,)


async def test_the_shared_secret_is_the_fallback_without_supabase_auth(
    database: str, es_url: str, gotrue: GoTrueState
) -> None:
    fallback = make_settings(database, es_url, dashboard_secret=SECRET)
    async with dashboard(fallback) as client:
        http = client()
        assert "Admin secret" in (await http.get("/login")).text
        assert (await sign_in(http, "bob", SECRET)).status_code == 303
        assert (await http.get("/")).status_code == 200
        stolen = http.cookies[SESSION_COOKIE]
        token = csrf_from((await http.get("/")).text)
        assert (await http.post("/logout", data={"csrf_token": token})).status_code == 303
        replayed = client()
        replayed.cookies.set(SESSION_COOKIE, stolen)
        assert (await replayed.get("/")).status_code == 303
    # With Supabase Auth configured the shared secret is no way in.
    both = supabase_settings(database, es_url, gotrue, dashboard_secret=SECRET)
    async with dashboard(both) as client:
        http = client()
        response = await post_login(http, name="bob", secret=SECRET, email="", password=SECRET)
        assert response.status_code == 401
        assert (await http.get("/")).status_code == 303
