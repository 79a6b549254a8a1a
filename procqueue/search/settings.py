"""The search slice's settings section (docs/operations.md, docs/bulk.md): where
Elasticsearch is, how its documents are named, how rows are synced and reconciled.
It hands out `search`, the `SearchConfig` the client takes."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from procqueue.settings import Section, bare_env


@dataclass(frozen=True)
class SearchConfig:
    """How to reach Elasticsearch (procqueue/search/client.py)."""

    url: str = "http://localhost:9200"
    api_key: SecretStr | None = None
    timeout: float = 10.0
    index_prefix: str = ""
    bulk_concurrency: int = 2


class SearchSettings(Section):
    elasticsearch_url: str = Field(
        default="http://localhost:9200", validation_alias=bare_env("ELASTICSEARCH_URL")
    )
    elasticsearch_api_key: SecretStr | None = Field(
        default=None, validation_alias=bare_env("ELASTICSEARCH_API_KEY")
    )
    elasticsearch_timeout: float = Field(default=10.0, gt=0)
    # `_bulk` requests one worker has in flight at once; more wait their turn in it.
    elasticsearch_bulk_concurrency: int = Field(default=2, ge=1, le=64)
    index_prefix: str = Field(default="", pattern=r"^[a-z0-9_\-]*$")

    reconcile_cron: str = "*/5 * * * *"  # "": no periodic reconciliation
    reconcile_batch: int = Field(default=5000, ge=1, le=1_000_000)  # rows per entity per run
    # Row sync jobs of one entity served by one read and one `_bulk` (1: one by one).
    sync_batch_size: int = Field(default=100, ge=1, le=1000)

    @field_validator("elasticsearch_url")
    @classmethod
    def _check_elasticsearch_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @property
    def search(self) -> SearchConfig:
        return SearchConfig(
            url=self.elasticsearch_url,
            api_key=self.elasticsearch_api_key,
            timeout=self.elasticsearch_timeout,
            index_prefix=self.index_prefix,
            bulk_concurrency=self.elasticsearch_bulk_concurrency,
        )
