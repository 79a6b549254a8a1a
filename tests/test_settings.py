"""Settings: defaults, one clear line for a bad setting, secrets kept out of errors,
and Supabase's transaction pooler detected."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from procqueue.app import worker_options
from procqueue.dashboard.settings import DashboardSettings
from procqueue.engine.services import ServiceKey, Services
from procqueue.entities import DEFAULT_ENTITIES, EntityRegistry, load_entities
from procqueue.errors import ConfigError
from procqueue.features import Settings, features, load_settings
from procqueue.search.settings import SearchSettings
from procqueue.settings import CoreSettings, Section, load_section

DSN = "postgresql://postgres:s3cr3t-pw@db.example.supabase.co:5432/postgres"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("DATABASE_URL", "ELASTICSEARCH_URL", "PROCQUEUE_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_worker_defaults_match_the_readme() -> None:
    settings = load_settings(database_url=DSN)
    assert settings.concurrency == 10
    assert settings.job_timeout == 30
    assert settings.max_retries == 3
    assert settings.use_listen_notify


def test_settings_come_from_the_environment_and_dotenv(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(f"DATABASE_URL={DSN}\nPROCQUEUE_JOB_TIMEOUT=12\n")
    monkeypatch.setenv("PROCQUEUE_CONCURRENCY", "7")
    settings = load_settings()
    assert (settings.concurrency, settings.job_timeout, settings.dsn) == (7, 12, DSN)


def test_missing_database_url_is_one_clear_line() -> None:
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert str(error.value) == (
        "setting DATABASE_URL is missing: set it in the environment or in .env"
    )


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("PROCQUEUE_CONCURRENCY", "lots", "setting PROCQUEUE_CONCURRENCY is invalid"),
        ("PROCQUEUE_CONCURRENCY", "0", "PROCQUEUE_CONCURRENCY is invalid.*greater than or equal"),
        ("ELASTICSEARCH_URL", "localhost:9200", "http:// or https://"),
        # Past what Postgres timestamps can reach back to (MAX_WINDOW: ten years).
        ("PROCQUEUE_HEALTH_WINDOW", "P3651D", "PROCQUEUE_HEALTH_WINDOW is invalid.*less than"),
        ("PROCQUEUE_HEALTH_WINDOW", "PT0S", "PROCQUEUE_HEALTH_WINDOW is invalid.*greater than"),
    ],
)
def test_malformed_setting_names_the_setting_and_the_problem(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", DSN)
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=expected) as error:
        load_settings()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ELASTICSEARCH_URL", "htp://elastic:EsPassw0rd@es.example.com:9200"),
        ("PROCQUEUE_CLOUDINARY_UPLOAD_PREFIX", "ftp://key:EsPassw0rd@api.example.com"),
        ("CLOUDINARY_URL", "cloudinary:/key:EsPassw0rd@demo"),
    ],
)
def test_no_url_setting_error_echoes_its_credentials(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", DSN)
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"setting {name} is invalid") as error:
        load_settings()
    assert "EsPassw0rd" not in str(error.value)


def test_malformed_database_url_does_not_echo_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://root:s3cr3t-pw@localhost/db")
    with pytest.raises(ConfigError, match="DATABASE_URL is invalid") as error:
        load_settings()
    assert "s3cr3t-pw" not in str(error.value)


def test_cli_prints_one_line_and_exits_2_on_bad_settings(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "procqueue.cli", "worker"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PROCQUEUE_CONCURRENCY": "x"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "procqueue: error: setting DATABASE_URL is missing: set it in the environment or in .env"
    ]


def test_secret_values_cover_the_dsn_and_its_password() -> None:
    secrets = load_settings(database_url=DSN, elasticsearch_api_key="k3y").secret_values()
    assert {"s3cr3t-pw", DSN, "k3y"} <= set(secrets)


def test_secret_values_cover_every_sections_secrets() -> None:
    secrets = load_settings(
        database_url=DSN,
        sentry_dsn="https://SentryKey1@o1.ingest.sentry.io/1",
        elasticsearch_api_key="EsKey123",
        cloudinary_url="cloudinary://1234:CloudSecret1@demo",
        smtp_password="SmtpSecret1",
        fcm_service_account_json='{"private_key": "FcmSecret1"}',
        dashboard_secret="DashSecret1",
        supabase_anon_key="AnonKey1",
        supabase_jwt_secret="JwtSecret1",
    ).secret_values()
    text = " ".join(secrets)
    for secret in (
        "s3cr3t-pw", "SentryKey1", "EsKey123", "CloudSecret1", "SmtpSecret1", "FcmSecret1",
        "DashSecret1", "AnonKey1", "JwtSecret1",
    ):  # fmt: skip
        assert secret in text


def test_each_features_section_is_part_of_the_loaded_settings() -> None:
    settings = load_settings(database_url=DSN)
    sections: list[type[Section]] = [feature.settings for feature in features()]
    sections.append(DashboardSettings)
    # The one settings class is the core's section and every feature's, nothing else.
    assert set(Settings.__bases__) == {CoreSettings, *sections}
    for section in sections:
        assert isinstance(settings, section) and settings.section(section) is settings
        assert section.__module__ != CoreSettings.__module__
    # Each field is declared by one section: no feature redefines another's.
    every: list[type[Section]] = [CoreSettings, *sections]
    owned = [name for section in every for name in section.model_fields]
    assert len(owned) == len(set(owned)) and set(owned) == set(Settings.model_fields)


def test_a_features_config_comes_from_its_own_section_and_module() -> None:
    settings = load_settings(
        database_url=DSN,
        smtp_host="smtp.example.com",
        smtp_sender="shop@example.com",
        cloudinary_url="cloudinary://1234:CloudSecret1@demo",
        fcm_project_id="demo",
        fcm_service_account_json="{}",
        supabase_url="https://ref.supabase.co",
        supabase_anon_key="anon",
    )
    homes = {
        "search": "procqueue.search.settings",
        "cloudinary": "procqueue.images.settings",
        "smtp": "procqueue.notifications.settings",
        "fcm": "procqueue.notifications.settings",
        "supabase_auth": "procqueue.dashboard.settings",
    }
    for name, module in homes.items():
        assert type(getattr(settings, name)).__module__ == module, name
        [owner] = [base for base in Settings.__mro__ if name in base.__dict__]
        assert owner.__module__ == module and owner is not Settings
    assert "search" not in CoreSettings.__dict__ and not hasattr(CoreSettings, "smtp")


def test_a_section_loads_alone_with_the_same_names_and_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ELASTICSEARCH_URL", "http://es.internal:9200")
    monkeypatch.setenv("PROCQUEUE_SYNC_BATCH_SIZE", "7")
    search = load_section(SearchSettings)  # no DATABASE_URL needed: the core's
    assert (search.search.url, search.sync_batch_size) == ("http://es.internal:9200", 7)
    monkeypatch.setenv("PROCQUEUE_SYNC_BATCH_SIZE", "0")
    with pytest.raises(ConfigError, match="setting PROCQUEUE_SYNC_BATCH_SIZE is invalid"):
        load_section(SearchSettings)


def test_the_core_sections_errors_come_before_a_features(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ELASTICSEARCH_URL", "localhost:9200")
    monkeypatch.setenv("PROCQUEUE_DASHBOARD_ADMIN_CLAIM", "nonsense")
    with pytest.raises(ConfigError, match=r"^setting DATABASE_URL is missing"):
        load_settings()


def test_the_core_section_alone_has_no_feature_section() -> None:
    core = load_section(CoreSettings, database_url=DSN)
    with pytest.raises(TypeError, match="have no SearchSettings section"):
        core.section(SearchSettings)


def test_transaction_pooler_warns_and_falls_back_to_polling(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pooler = "postgresql://postgres.ref:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres"
    settings = load_settings(database_url=pooler)
    with caplog.at_level(logging.WARNING):
        options = worker_options(settings)
    assert options["listen_notify"] is False
    assert "6543" in caplog.text and "session pooler (port 5432)" in caplog.text
    assert "pw@" not in caplog.text
    session = load_settings(database_url=pooler.replace(":6543", ":5432"))
    assert worker_options(session)["listen_notify"] is True


def test_entities_file_configures_other_schemas(tmp_path: Path) -> None:
    config = tmp_path / "entities.toml"
    config.write_text(
        '[[entity]]\nname = "product"\ntable = "shop.products"\nindex = "products"\n'
        'primary_key = "sku"\nignored_columns = ["hits"]\n'
        '[entity.fields]\nsku = "keyword"\ntitle = "text"\n'
    )
    [product] = load_entities(config)
    assert (product.table_name, product.primary_key, product.ignored_columns) == (
        "products", "sku", ("hits",)
    )  # fmt: skip
    assert load_entities(None) == DEFAULT_ENTITIES


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('[[entity]]\nname = "x"\n', "missing the key 'table'"),
        (
            '[[entity]]\nname="x"\ntable="t"\nindex="x"\n[entity.fields]\na="text"\n',
            "schema-qualified",
        ),
        (
            '[[entity]]\nname="x"\ntable="s.t"\nindex="x"\n[entity.fields]\na="blob"\n',
            "unknown field type",
        ),
        ("not toml =", "not valid TOML"),
    ],
)
def test_bad_entities_file_is_a_clear_error(tmp_path: Path, body: str, expected: str) -> None:
    config = tmp_path / "entities.toml"
    config.write_text(body)
    with pytest.raises(ConfigError, match=expected):
        load_entities(config)


def test_example_entities_file_is_the_default_configuration() -> None:
    from tests.support.repo import REPO_DIR

    assert load_entities(REPO_DIR / "examples" / "entities.toml") == DEFAULT_ENTITIES


def test_each_part_gets_a_small_config_whose_repr_carries_no_secret() -> None:
    settings = load_settings(
        database_url="postgresql://app:DbSecret1@db/app",
        elasticsearch_url="http://es:9200",
        elasticsearch_api_key="EsKey123",
        smtp_host="smtp.example.com",
        smtp_sender="shop@example.com",
        smtp_password="SmtpSecret1",
        cloudinary_url="cloudinary://1234:CloudSecret1@demo",
        fcm_service_account_json='{"private_key": "FcmSecret1"}',
        fcm_project_id="demo",
    )
    configs = [settings.search, settings.smtp, settings.fcm, settings.cloudinary, settings.health]
    assert all(config is not None for config in configs)
    text = " ".join(repr(config) for config in configs)
    for secret in ("DbSecret1", "EsKey123", "SmtpSecret1", "CloudSecret1", "FcmSecret1"):
        assert secret not in text
    assert settings.search.url == "http://es:9200" and settings.search.index_prefix == ""


async def test_services_make_each_client_once_and_close_them_all() -> None:
    services = Services(load_settings(database_url="postgresql://db/app"), EntityRegistry(()))
    closed: list[str] = []

    async def close(name: str) -> None:
        closed.append(name)
        if name == "b":
            raise RuntimeError("b would not close")

    made = {"a": 0, "b": 0}

    def factory(name: str) -> Callable[[], str]:
        def make() -> str:
            made[name] += 1
            return name

        return make

    services.provide(ServiceKey[str]("a"), factory("a"), close)
    services.provide(ServiceKey[str]("b"), factory("b"), close)
    assert services.get(ServiceKey[str]("a")) == services.get(ServiceKey[str]("a")) == "a"
    services.get(ServiceKey[str]("b"))
    with pytest.raises(LookupError, match="no service named 'c'"):
        services.get(ServiceKey[str]("c"))
    with pytest.raises(RuntimeError, match="b would not close"):
        await services.aclose()
    assert closed == ["b", "a"] and made == {"a": 1, "b": 1}
