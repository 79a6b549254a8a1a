"""Settings, read from the environment and `.env` by pydantic-settings.

`load_settings()` is the one entry point: it turns pydantic's validation report
into a ConfigError whose single line names the setting and the problem.

`Settings` is the one environment reader. What a sink or a client needs it hands
out as a small frozen config (`search`, `smtp`, `fcm`, `cloudinary`, `health`,
`schema_config()`): the sinks take their own config, never `Settings`. The configs
live here, and not next to their sinks, because this module imports no feature
package; `HealthConfig` lives in procqueue/queue/health.py (core, no cycle). No
config's `repr` shows a secret: secrets stay `SecretStr`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from sentry_sdk.utils import BadDsn, Dsn

from procqueue.entities import DEFAULT_ENTITIES, Entity, load_entities
from procqueue.errors import ConfigError
from procqueue.queue.failures import redact
from procqueue.queue.health import HealthConfig

SUPABASE_TRANSACTION_POOLER_PORT = 6543
#: The SMTP port each security mode uses when PROCQUEUE_SMTP_PORT is unset.
SMTP_DEFAULT_PORTS = {"plain": 25, "starttls": 587, "tls": 465}
#: The Cloudinary Admin API's limit of public ids per delete_resources call.
CLOUDINARY_MAX_IDS_PER_CALL = 100


def _env(name: str) -> Any:
    """Accept the bare name and the PROCQUEUE_-prefixed one."""
    return AliasChoices(name, f"PROCQUEUE_{name}")


_ENVIRONMENT = SettingsConfigDict(
    env_file=".env", env_prefix="PROCQUEUE_", extra="ignore", populate_by_name=True
)


@dataclass(frozen=True)
class SchemaConfig:
    """What `procqueue migrate` writes into the database: the entities its triggers
    serve and the values the trigger functions receive as arguments."""

    entities: tuple[Entity, ...] = DEFAULT_ENTITIES
    bulk_threshold: int = 50
    bulk_chunk_size: int = 500
    image_cleanup_grace: float = 600.0  # seconds a removed image waits before cleanup
    notifications_table: str = "public.notifications"  # "": no notification trigger


@dataclass(frozen=True)
class SearchConfig:
    """How to reach Elasticsearch (procqueue/search/client.py)."""

    url: str = "http://localhost:9200"
    api_key: SecretStr | None = None
    timeout: float = 10.0
    index_prefix: str = ""
    bulk_concurrency: int = 2


@dataclass(frozen=True)
class SmtpConfig:
    """The SMTP server email goes through (procqueue/notifications/smtp.py)."""

    host: str
    port: int
    security: Literal["plain", "starttls", "tls"]
    sender: str
    username: str | None = None
    password: SecretStr | None = None
    timeout: float = 10.0


@dataclass(frozen=True)
class FcmConfig:
    """Where the push sender finds its Firebase service account and FCM
    (procqueue/notifications/fcm.py reads the key). The key's JSON is a secret."""

    service_account_file: Path | None = None
    service_account_json: SecretStr | None = field(default=None, repr=False)
    project_id: str | None = None  # None: the service-account key's project
    token_uri: str | None = None  # None: the service-account key's token_uri
    base_url: str = "https://fcm.googleapis.com"
    timeout: float = 10.0


@dataclass(frozen=True)
class CloudinaryConfig:
    """The Cloudinary account image cleanup deletes from (procqueue/images/cloudinary.py)."""

    cloud_name: str
    api_key: SecretStr
    api_secret: SecretStr
    upload_prefix: str | None = None
    timeout: float = 10.0
    batch_size: int = CLOUDINARY_MAX_IDS_PER_CALL
    domains: tuple[str, ...] = ()  # custom delivery domains
    folders: tuple[str, ...] = ("items", "listings")  # cleanup deletes from these only; "*": any


@dataclass(frozen=True)
class SupabaseAuthConfig:
    """How the dashboard signs admins in with their Supabase Auth accounts
    (procqueue/dashboard/supabase_auth.py)."""

    url: str  # the project URL, https://<ref>.supabase.co
    anon_key: SecretStr
    jwt_secret: SecretStr | None  # None: asymmetric keys only, read from the JWKS
    admin_claim: tuple[str, ...]  # the path into the access token's claims
    admin_value: str  # what the claim must be (or contain, for a list)
    timeout: float = 10.0

    @property
    def issuer(self) -> str:
        return f"{self.url}/auth/v1"


class SchemaSettings(BaseSettings):
    """The settings that shape the schema. They load without DATABASE_URL, so that
    `procqueue migrate --from-scratch` builds the same triggers as `procqueue migrate`."""

    model_config = _ENVIRONMENT

    entities_file: Path | None = None
    # Bulk jobs (docs/bulk.md); image cleanup grace (docs/images.md). They reach the
    # triggers through `procqueue migrate`: re-run it after changing them.
    bulk_threshold: int = Field(default=SchemaConfig.bulk_threshold, ge=0, le=1_000_000)
    bulk_chunk_size: int = Field(default=SchemaConfig.bulk_chunk_size, ge=1, le=10_000)
    image_cleanup_grace: float = Field(
        default=SchemaConfig.image_cleanup_grace, ge=0, le=30 * 86400
    )
    # Notifications (docs/notifications.md). Empty notifications_table: no trigger.
    notifications_table: str = Field(
        default=SchemaConfig.notifications_table, pattern=r"^([A-Za-z_]\w*\.[A-Za-z_]\w*)?$"
    )

    def schema_config(self, entities_file: Path | None = None) -> SchemaConfig:
        """The schema these settings describe; `entities_file` overrides the setting."""
        return SchemaConfig(
            entities=load_entities(entities_file or self.entities_file),
            bulk_threshold=self.bulk_threshold,
            bulk_chunk_size=self.bulk_chunk_size,
            image_cleanup_grace=self.image_cleanup_grace,
            notifications_table=self.notifications_table,
        )


class Settings(SchemaSettings):
    model_config = _ENVIRONMENT

    database_url: SecretStr = Field(validation_alias=_env("DATABASE_URL"))
    elasticsearch_url: str = Field(
        default="http://localhost:9200", validation_alias=_env("ELASTICSEARCH_URL")
    )
    elasticsearch_api_key: SecretStr | None = Field(
        default=None, validation_alias=_env("ELASTICSEARCH_API_KEY")
    )
    elasticsearch_timeout: float = Field(default=10.0, gt=0)
    # `_bulk` requests one worker has in flight at once; more wait their turn in it.
    elasticsearch_bulk_concurrency: int = Field(default=2, ge=1, le=64)
    index_prefix: str = Field(default="", pattern=r"^[a-z0-9_\-]*$")

    concurrency: int = Field(default=10, ge=1, le=200)
    job_timeout: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=3, ge=0, le=100)
    reconcile_cron: str = "*/5 * * * *"  # "": no periodic reconciliation
    reconcile_batch: int = Field(default=5000, ge=1, le=1_000_000)  # rows per entity per run
    circuit_max_wait: float = Field(default=30.0, gt=0, le=3600)  # longest wait between probes
    # Row sync jobs of one entity served by one read and one `_bulk` (1: one by one).
    sync_batch_size: int = Field(default=100, ge=1, le=1000)
    retry_backoff: float = Field(default=2.0, ge=0)
    retry_backoff_max: float = Field(default=300.0, ge=0)
    polling_interval: float = Field(default=5.0, gt=0)
    listen_notify: bool | None = None
    # DATABASE_URL goes through a transaction pooler (Supavisor/pgbouncer in transaction
    # mode): no LISTEN, no prepared statements, no session state. Unset: port 6543.
    transaction_pooler: bool | None = None

    # Failures and queue health (docs/operations.md).
    sentry_dsn: SecretStr | None = Field(default=None, validation_alias=_env("SENTRY_DSN"))
    environment: str = Field(default="production", validation_alias=_env("ENVIRONMENT"))
    log_format: Literal["text", "json"] = "text"
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    heartbeat_interval: float = Field(default=10.0, gt=0)
    stalled_timeout: float = Field(default=30.0, gt=0)
    maintenance_tasks: bool = True
    rescue_interval: int = Field(default=15, ge=1, le=60)
    prune_cron: str = "*/10 * * * *"
    prune_succeeded_after: timedelta = timedelta(days=7)
    prune_failed_after: timedelta = timedelta(days=30)
    prune_batch_size: int = Field(default=500, ge=1, le=100_000)
    health_lag_degraded: float = Field(default=60.0, ge=0)
    health_lag_unhealthy: float = Field(default=600.0, ge=0)
    health_failure_rate_degraded: float = Field(default=0.05, ge=0, le=1)
    health_failure_rate_unhealthy: float = Field(default=0.5, ge=0, le=1)
    health_min_failures: int = Field(default=3, ge=1)
    health_min_workers: int = Field(default=1, ge=0)
    health_window: timedelta = timedelta(hours=1)

    push_tokens_table: str = Field(
        default="public.push_tokens", pattern=r"^[A-Za-z_]\w*\.[A-Za-z_]\w*$"
    )
    default_locale: str = Field(default="tr", pattern=r"^(tr|en)$")
    notification_templates_dir: Path | None = None
    smtp_host: str | None = None
    smtp_port: int | None = Field(default=None, ge=1, le=65535)
    smtp_security: Literal["plain", "starttls", "tls"] = "starttls"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_sender: str | None = None
    smtp_timeout: float = Field(default=10.0, gt=0)
    fcm_project_id: str | None = None
    fcm_service_account_file: Path | None = None
    fcm_service_account_json: SecretStr | None = None
    fcm_token_uri: str | None = None
    fcm_base_url: str = "https://fcm.googleapis.com"
    fcm_timeout: float = Field(default=10.0, gt=0)

    # Cloudinary image cleanup (docs/images.md). CLOUDINARY_URL is read as the SDK
    # reads it (cloudinary://key:secret@cloud); the separate variables win over it.
    cloudinary_url: SecretStr | None = Field(default=None, validation_alias=_env("CLOUDINARY_URL"))
    cloudinary_cloud_name: str | None = Field(
        default=None, validation_alias=_env("CLOUDINARY_CLOUD_NAME")
    )
    cloudinary_api_key: SecretStr | None = Field(
        default=None, validation_alias=_env("CLOUDINARY_API_KEY")
    )
    cloudinary_api_secret: SecretStr | None = Field(
        default=None, validation_alias=_env("CLOUDINARY_API_SECRET")
    )
    cloudinary_upload_prefix: str | None = Field(default=None, pattern=r"^https?://\S+$")
    cloudinary_domains: str = ""  # custom delivery domains, comma-separated
    # The folders the marketplace uploads to: cleanup deletes nothing outside them.
    cloudinary_folders: str = Field(default="items,listings", min_length=1)
    cloudinary_batch_size: int = Field(default=100, ge=1, le=100)
    cloudinary_timeout: float = Field(default=10.0, gt=0)

    # Dashboard (docs/dashboard.md): the admins' sign-in secret; without it the
    # dashboard only starts bound to 127.0.0.1 with --local-only.
    dashboard_secret: SecretStr | None = None
    dashboard_cookie_secure: bool = False  # True behind HTTPS: the session cookie is Secure
    # Absolute: a session ends this long after sign-in, however active (checked server-side).
    dashboard_session_lifetime: timedelta = Field(
        default=timedelta(hours=12), gt=timedelta(0), le=timedelta(days=30)
    )
    # Supabase Auth sign-in (docs/dashboard.md): set SUPABASE_URL and SUPABASE_ANON_KEY and
    # admins sign in as themselves; the shared secret is then not accepted.
    supabase_url: str | None = Field(default=None, validation_alias=_env("SUPABASE_URL"))
    supabase_anon_key: SecretStr | None = Field(
        default=None, validation_alias=_env("SUPABASE_ANON_KEY")
    )
    supabase_jwt_secret: SecretStr | None = Field(
        default=None, validation_alias=_env("SUPABASE_JWT_SECRET")
    )
    dashboard_admin_claim: str = "app_metadata.role=admin"

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        looks_like_url = "://" in text
        if looks_like_url and urlsplit(text).scheme not in ("postgres", "postgresql"):
            raise ValueError("must be a postgresql:// connection string")
        try:
            conninfo_to_dict(text)
        except psycopg.ProgrammingError:
            raise ValueError(
                "is not a valid Postgres connection string "
                "(Supabase: Project Settings > Database > Connection string)"
            ) from None
        return value

    @field_validator("cloudinary_url")
    @classmethod
    def _check_cloudinary_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _cloudinary_url_parts(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _fill_cloudinary_from_url(self) -> Settings:
        if self.cloudinary_url is not None:
            cloud, key, secret, prefix = _cloudinary_url_parts(
                self.cloudinary_url.get_secret_value()
            )
            self.cloudinary_cloud_name = self.cloudinary_cloud_name or cloud
            self.cloudinary_api_key = self.cloudinary_api_key or SecretStr(key)
            self.cloudinary_api_secret = self.cloudinary_api_secret or SecretStr(secret)
            self.cloudinary_upload_prefix = self.cloudinary_upload_prefix or prefix
        return self

    @field_validator("supabase_url")
    @classmethod
    def _check_supabase_url(cls, value: str | None) -> str | None:
        if value and not re.fullmatch(r"https?://[^\s/@]+/?", value):
            raise ValueError("must be the project URL alone, like https://<ref>.supabase.co")
        return value

    @field_validator("dashboard_admin_claim")
    @classmethod
    def _check_admin_claim(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*=\S+", value):
            raise ValueError("must be <claim path>=<value>, like app_metadata.role=admin")
        return value

    @field_validator("elasticsearch_url")
    @classmethod
    def _check_elasticsearch_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("sentry_dsn")
    @classmethod
    def _check_sentry_dsn(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value():
            try:
                Dsn(value.get_secret_value())
            except BadDsn:
                raise ValueError(
                    "must look like https://<key>@<host>/<project> "
                    "(Sentry: Project Settings > Client Keys (DSN))"
                ) from None
        return value

    @model_validator(mode="after")
    def _check_heartbeat_against_stalled_timeout(self) -> Settings:
        if self.heartbeat_interval >= self.stalled_timeout:
            heartbeat = _variable(Settings, ("heartbeat_interval",))
            stalled = _variable(Settings, ("stalled_timeout",))
            raise ValueError(
                f"{heartbeat} ({self.heartbeat_interval:g} s) must be shorter than {stalled} "
                f"({self.stalled_timeout:g} s), or the stalled-job rescue takes live workers "
                "for dead: keep the timeout at least three heartbeat intervals",
            )
        return self

    @property
    def dsn(self) -> str:
        return self.database_url.get_secret_value()

    @property
    def uses_transaction_pooler(self) -> bool:
        """Supabase's transaction pooler (Supavisor, port 6543) cannot LISTEN."""
        if self.transaction_pooler is not None:
            return self.transaction_pooler
        port = conninfo_to_dict(self.dsn).get("port")
        return str(port) == str(SUPABASE_TRANSACTION_POOLER_PORT)

    def secret_values(self) -> tuple[str, ...]:
        """Values that must never reach a log line, a job's args or an error record."""
        values = [self.dsn, conninfo_to_dict(self.dsn).get("password")]
        values += [
            value.get_secret_value()
            for value in self.__dict__.values()
            if isinstance(value, SecretStr)
        ]
        return tuple(sorted({str(value) for value in values if value}, key=len, reverse=True))

    @property
    def use_listen_notify(self) -> bool:
        if self.listen_notify is not None:
            return self.listen_notify
        return not self.uses_transaction_pooler

    @property
    def search(self) -> SearchConfig:
        return SearchConfig(
            url=self.elasticsearch_url,
            api_key=self.elasticsearch_api_key,
            timeout=self.elasticsearch_timeout,
            index_prefix=self.index_prefix,
            bulk_concurrency=self.elasticsearch_bulk_concurrency,
        )

    @property
    def smtp(self) -> SmtpConfig | None:
        """None: email is not configured (no PROCQUEUE_SMTP_HOST). ConfigError: it is,
        but not enough to send."""
        if not self.smtp_host:
            return None
        if not self.smtp_sender:
            raise ConfigError(
                "email is not configured: set PROCQUEUE_SMTP_HOST and PROCQUEUE_SMTP_SENDER "
                "(or take 'email' out of procqueue.notification_rules)"
            )
        return SmtpConfig(
            host=self.smtp_host,
            port=self.smtp_port or SMTP_DEFAULT_PORTS[self.smtp_security],
            security=self.smtp_security,
            sender=self.smtp_sender,
            username=self.smtp_username,
            password=self.smtp_password,
            timeout=self.smtp_timeout,
        )

    @property
    def fcm(self) -> FcmConfig | None:
        """None: push is not configured (no service-account key, file or JSON)."""
        if self.fcm_service_account_file is None and self.fcm_service_account_json is None:
            return None
        return FcmConfig(
            service_account_file=self.fcm_service_account_file,
            service_account_json=self.fcm_service_account_json,
            project_id=self.fcm_project_id,
            token_uri=self.fcm_token_uri,
            base_url=self.fcm_base_url,
            timeout=self.fcm_timeout,
        )

    @property
    def cloudinary(self) -> CloudinaryConfig | None:
        """None: no Cloudinary credentials (cloud name, API key and secret)."""
        if not (
            self.cloudinary_cloud_name and self.cloudinary_api_key and self.cloudinary_api_secret
        ):
            return None
        return CloudinaryConfig(
            cloud_name=self.cloudinary_cloud_name,
            api_key=self.cloudinary_api_key,
            api_secret=self.cloudinary_api_secret,
            upload_prefix=self.cloudinary_upload_prefix,
            timeout=self.cloudinary_timeout,
            batch_size=self.cloudinary_batch_size,
            domains=self.cloudinary_domain_list,
            folders=tuple(
                part.strip().strip("/")
                for part in self.cloudinary_folders.split(",")
                if part.strip().strip("/")
            ),
        )

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
        path, value = self.dashboard_admin_claim.split("=", 1)
        return SupabaseAuthConfig(
            url=self.supabase_url.rstrip("/"),
            anon_key=self.supabase_anon_key,
            jwt_secret=self.supabase_jwt_secret or None,
            admin_claim=tuple(path.split(".")),
            admin_value=value,
        )

    @property
    def cloudinary_domain_list(self) -> tuple[str, ...]:
        """CLOUDINARY_DOMAINS, split: the custom delivery domains."""
        return tuple(part.strip() for part in self.cloudinary_domains.split(",") if part.strip())

    @property
    def health(self) -> HealthConfig:
        return HealthConfig(
            lag_degraded=self.health_lag_degraded,
            lag_unhealthy=self.health_lag_unhealthy,
            failure_rate_degraded=self.health_failure_rate_degraded,
            failure_rate_unhealthy=self.health_failure_rate_unhealthy,
            min_failures=self.health_min_failures,
            min_workers=self.health_min_workers,
            window=self.health_window,
            stalled_after=timedelta(seconds=self.stalled_timeout),
        )


def _cloudinary_url_parts(text: str) -> tuple[str, str, str, str | None]:
    """(cloud, api key, api secret, upload prefix) of cloudinary://key:secret@cloud."""
    parts = urlsplit(text.strip())
    if parts.scheme != "cloudinary" or not (parts.username and parts.password and parts.hostname):
        raise ValueError(
            "must look like cloudinary://<api_key>:<api_secret>@<cloud_name> "
            "(Cloudinary console: Dashboard > API environment variable)"
        )
    prefix = parse_qs(parts.query).get("upload_prefix", [None])[0]
    return parts.hostname, unquote(parts.username), unquote(parts.password), prefix


#: Settings whose value is a secret as a whole: an error never shows what was given.
_SECRET_WORDS = ("database_url", "secret", "password", "api_key", "cloudinary_url", "dsn", "json")


def _variable(model: type[BaseSettings], location: tuple[Any, ...]) -> str:
    """The environment variable a user sets for the field at `location`, as they
    write it: PROCQUEUE_CONCURRENCY, or DATABASE_URL for a field with an alias."""
    first = str(location[0]) if location else ""
    field = model.model_fields.get(first)
    if field is None:
        return first.upper() or "settings"
    alias = field.validation_alias
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0]
    return f"PROCQUEUE_{first.upper()}"


def _describe(error: ValidationError, model: type[BaseSettings]) -> str:
    first = error.errors()[0]
    if not first["loc"]:  # a rule between settings: its message names them, shows no input
        return f"settings do not fit together: {first['msg'].removeprefix('Value error, ')}"
    name = _variable(model, tuple(first["loc"]))
    if first["type"] == "missing":
        return f"setting {name} is missing: set it in the environment or in .env"
    secret = any(word in name.lower() for word in _SECRET_WORDS)
    # Any other value may still carry credentials (a URL's user:password@): redacted.
    received = "" if secret else f" (got {redact(repr(first.get('input')))})"
    return f"setting {name} is invalid: {first['msg']}{received}"


def load_settings(**overrides: Any) -> Settings:
    """Read the settings; raise ConfigError with one clear line if they are wrong."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise ConfigError(_describe(error, Settings)) from None


def load_schema_settings(**overrides: Any) -> SchemaSettings:
    """The schema settings alone: no DATABASE_URL needed."""
    try:
        return SchemaSettings(**overrides)
    except ValidationError as error:
        raise ConfigError(_describe(error, SchemaSettings)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
