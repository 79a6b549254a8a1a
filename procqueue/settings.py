"""Settings, read from the environment and `.env` by pydantic-settings.

`load_settings()` is the one entry point: it turns pydantic's validation report
into a ConfigError whose single line names the setting and the problem.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from procqueue.errors import ConfigError

SUPABASE_TRANSACTION_POOLER_PORT = 6543


def _env(name: str) -> Any:
    """Accept the bare name and the PROCQUEUE_-prefixed one."""
    return AliasChoices(name, f"PROCQUEUE_{name}")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_prefix="PROCQUEUE_", extra="ignore", populate_by_name=True
    )

    database_url: SecretStr = Field(validation_alias=_env("DATABASE_URL"))
    elasticsearch_url: str = Field(
        default="http://localhost:9200", validation_alias=_env("ELASTICSEARCH_URL")
    )
    elasticsearch_api_key: SecretStr | None = Field(
        default=None, validation_alias=_env("ELASTICSEARCH_API_KEY")
    )
    elasticsearch_timeout: float = Field(default=10.0, gt=0)
    index_prefix: str = Field(default="", pattern=r"^[a-z0-9_\-]*$")

    concurrency: int = Field(default=10, ge=1, le=200)
    job_timeout: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=3, ge=0, le=100)
    retry_backoff: float = Field(default=2.0, ge=0)
    retry_backoff_max: float = Field(default=300.0, ge=0)
    polling_interval: float = Field(default=5.0, gt=0)
    listen_notify: bool | None = None
    entities_file: Path | None = None

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

    @field_validator("elasticsearch_url")
    @classmethod
    def _check_elasticsearch_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @property
    def dsn(self) -> str:
        return self.database_url.get_secret_value()

    @property
    def uses_transaction_pooler(self) -> bool:
        """Supabase's transaction pooler (Supavisor, port 6543) cannot LISTEN."""
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


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    name = "_".join(str(part) for part in first["loc"]).upper() or "settings"
    if first["type"] == "missing":
        return f"setting {name} is missing: set it in the environment or in .env"
    received = "" if "database_url" in name.lower() else f" (got {first.get('input')!r})"
    return f"setting {name} is invalid: {first['msg']}{received}"


def load_settings(**overrides: Any) -> Settings:
    """Read the settings; raise ConfigError with one clear line if they are wrong."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
