"""Settings, read from the environment and `.env` by pydantic-settings.

The settings are sectioned by owner: this module holds the core's section
(`CoreSettings`: database, worker, retry, failures, health, maintenance, and the
schema's `SchemaSettings`), and each feature declares its own in its folder
(procqueue/search/settings.py, images/, notifications/, dashboard/). Every section
is a `Section`: the same `_ENVIRONMENT` (PROCQUEUE_<FIELD>, a few bare names through
`bare_env`), its fields, their checks, and the small frozen configs it hands out
(`search`, `smtp`, `cloudinary`...: the sinks take their own config, never the
settings). The one settings object is the class that combines the core's section
with every feature's (`procqueue.features.Settings`, next to `features()`: the core
imports no feature), read by the one loader, `load_section`, which turns pydantic's
validation report into a ConfigError whose single line names the environment
variable and the problem. `HealthConfig` lives in procqueue/queue/health.py (core,
no cycle). No config's `repr` shows a secret: secrets stay `SecretStr`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, Self, TypeVar
from urllib.parse import urlsplit

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
from procqueue.queue.health import MAX_WINDOW, HealthConfig
from procqueue.redaction import redact

SUPABASE_TRANSACTION_POOLER_PORT = 6543


#: What every setting's environment variable starts with.
PREFIX = "PROCQUEUE_"


def bare_env(name: str) -> Any:
    """Accept the bare name and the PROCQUEUE_-prefixed one."""
    return AliasChoices(name, f"PROCQUEUE_{name}")


_ENVIRONMENT = SettingsConfigDict(
    env_file=".env", env_prefix=PREFIX, extra="ignore", populate_by_name=True
)


class Section(BaseSettings):
    """One owner's part of the settings: its fields (PROCQUEUE_<FIELD>), their checks
    and the configs it hands out. A section loads alone too (`load_section`)."""

    model_config = _ENVIRONMENT


SectionT = TypeVar("SectionT", bound=BaseSettings)


@dataclass(frozen=True)
class SchemaConfig:
    """What `procqueue migrate` writes into the database: the entities its triggers
    serve and the values the trigger functions receive as arguments."""

    entities: tuple[Entity, ...] = DEFAULT_ENTITIES
    bulk_threshold: int = 50
    bulk_chunk_size: int = 500
    image_cleanup_grace: float = 600.0  # seconds a removed image waits before cleanup
    notifications_table: str = "public.notifications"  # "": no notification trigger


class SchemaSettings(Section):
    """The settings that shape the schema. They load without DATABASE_URL, so that
    `procqueue migrate --from-scratch` builds the same triggers as `procqueue migrate`."""

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


class CoreSettings(SchemaSettings):
    """The core's section: what the engine and procqueue/queue/ read. The loaded
    settings are a subclass of it that adds every feature's section."""

    database_url: SecretStr = Field(validation_alias=bare_env("DATABASE_URL"))

    concurrency: int = Field(default=10, ge=1, le=200)
    job_timeout: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=3, ge=0, le=100)
    circuit_max_wait: float = Field(default=30.0, gt=0, le=3600)  # longest wait between probes
    retry_backoff: float = Field(default=2.0, ge=0)
    retry_backoff_max: float = Field(default=300.0, ge=0)
    polling_interval: float = Field(default=5.0, gt=0)
    listen_notify: bool | None = None
    # DATABASE_URL goes through a transaction pooler (Supavisor/pgbouncer in transaction
    # mode): no LISTEN, no prepared statements, no session state. Unset: port 6543.
    transaction_pooler: bool | None = None

    # Failures and queue health (docs/operations.md).
    sentry_dsn: SecretStr | None = Field(default=None, validation_alias=bare_env("SENTRY_DSN"))
    environment: str = Field(default="production", validation_alias=bare_env("ENVIRONMENT"))
    log_format: Literal["text", "json"] = "text"
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    heartbeat_interval: float = Field(default=10.0, gt=0)
    stalled_timeout: float = Field(default=30.0, gt=0)
    # A stop (SIGTERM) ends within this many seconds, whatever the database does.
    shutdown_timeout: float = Field(default=30.0, gt=0, le=3600)
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
    health_window: timedelta = Field(
        default=HealthConfig.window, gt=timedelta(0), le=MAX_WINDOW
    )

    # The worker's preflight checks its role can reach it (procqueue/engine/app.py);
    # the push channel reads tokens from it (docs/notifications.md).
    push_tokens_table: str = Field(
        default="public.push_tokens", pattern=r"^[A-Za-z_]\w*\.[A-Za-z_]\w*$"
    )

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
    def _check_heartbeat_against_stalled_timeout(self) -> Self:
        if self.heartbeat_interval >= self.stalled_timeout:
            heartbeat = _variable(CoreSettings, ("heartbeat_interval",))
            stalled = _variable(CoreSettings, ("stalled_timeout",))
            raise ValueError(
                f"{heartbeat} ({self.heartbeat_interval:g} s) must be shorter than {stalled} "
                f"({self.stalled_timeout:g} s), or the stalled-job rescue takes live workers "
                "for dead: keep the timeout at least three heartbeat intervals",
            )
        return self

    def section(self, kind: type[SectionT]) -> SectionT:
        """These settings as the section `kind` (a feature's), which the loaded
        settings include: a feature reads its own fields from `app.services.settings`."""
        if not isinstance(self, kind):
            raise TypeError(
                f"these settings ({type(self).__name__}) have no {kind.__name__} section: "
                "load them with procqueue.features.load_settings"
            )
        return self

    @property
    def overrun_after(self) -> float:
        """Seconds after which a running job has no live owner (its timeout cancels it
        before that): the rescue takes it back, the reconciliation does not trust it."""
        return self.job_timeout + self.stalled_timeout

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
        """Values that must never reach a log line, a job's args or an error record:
        those of every section these settings include."""
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


#: PROCQUEUE_* variables that are not settings: read by procqueue's own test suite.
NOT_SETTINGS = frozenset({"PROCQUEUE_TEST_DATABASE_URL", "PROCQUEUE_SCREENSHOTS_DIR"})


def setting_variables(model: type[BaseSettings]) -> set[str]:
    """Every environment variable name `model` reads, upper case."""
    names: set[str] = set()
    for field_name, field in model.model_fields.items():
        names.add(f"{PREFIX}{field_name.upper()}")
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(choice.upper() for choice in alias.choices if isinstance(choice, str))
    return names


def unknown_variables(model: type[BaseSettings], environ: Mapping[str, object]) -> list[str]:
    """One line per PROCQUEUE_* variable in `environ` that `model` does not read (a typo
    pydantic would ignore in silence), with the closest name it reads. Names only: a
    value is never shown, it may be a secret."""
    known = setting_variables(model)
    lines = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(PREFIX) or upper in known or upper in NOT_SETTINGS:
            continue
        # Compared without the prefix every name shares, so that it alone matches nothing.
        suffixes = {name.removeprefix(PREFIX): name for name in known if name.startswith(PREFIX)}
        close = difflib.get_close_matches(upper.removeprefix(PREFIX), sorted(suffixes), n=1)
        hint = f": did you mean {suffixes[close[0]]}?" if close else ""
        lines.append(f"{name} is not a procqueue setting and is ignored{hint}")
    return lines


def load_section(model: type[SectionT], **overrides: Any) -> SectionT:
    """Read `model` (a section, or the class of all of them: procqueue.features.Settings)
    from the environment and `.env`; `overrides` are field values that win over both.
    Raise ConfigError with one clear line naming the variable if they are wrong."""
    try:
        return model(**overrides)
    except ValidationError as error:
        raise ConfigError(_describe(error, model)) from None


def load_schema_settings(**overrides: Any) -> SchemaSettings:
    """The schema settings alone: no DATABASE_URL needed."""
    return load_section(SchemaSettings, **overrides)
