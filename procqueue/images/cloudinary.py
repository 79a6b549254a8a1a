"""The Cloudinary side: delete assets with the Admin API, through the official SDK.

`delete_resources` (DELETE /v1_1/<cloud>/resources/<resource_type>/<type>) takes
up to 100 public ids of one resource type and delivery type per call, so assets
are grouped by those two and sent in batches. The SDK is synchronous: each call
runs in a thread, never on the event loop. Credentials come from a
CloudinaryConfig (`ImageSettings.cloudinary`), are passed per call (the SDK's global
configuration is left alone) and never logged. A worker's jobs share one
CloudinaryDeleter through the app's Services: `cloudinary_deleter(app.services)`.

Errors are translated here, once: "not found" is done; network errors, timeouts,
5xx and rate limits (420/429) are transient — a rate limit carries the time
Cloudinary allows the next call, which the retry strategy honours; bad
credentials (401) and other 4xx are permanent.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import groupby
from typing import Any

import cloudinary.api
import cloudinary.exceptions

from procqueue.engine.services import ServiceKey, Services
from procqueue.errors import PermanentError, SinkUnavailable, TransientError
from procqueue.images.jobs import SINK
from procqueue.images.settings import CLOUDINARY_MAX_IDS_PER_CALL, CloudinaryConfig
from procqueue.images.urls import Asset, DeliveryConfig

logger = logging.getLogger(__name__)

MAX_IDS_PER_CALL = CLOUDINARY_MAX_IDS_PER_CALL  # the Admin API's limit for delete_resources
MAX_CURSOR_ROUNDS = 20  # `partial` answers: continue with next_cursor, this many times
DONE_STATUSES = frozenset({"deleted", "not_found"})
# Cloudinary's 420 body: "Rate Limit Exceeded. ... Try again on 2024-10-04 14:00:00 UTC"
_TRY_AGAIN = re.compile(r"try again on (\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2})", re.IGNORECASE)
_STATUS = re.compile(r"^Error (\d{3}) - ")


class CloudinaryRateLimited(SinkUnavailable):
    """Cloudinary refused the call for now; `retry_at` is when it allows the next one."""

    def __init__(self, message: str, retry_at: datetime | None) -> None:
        super().__init__(SINK, message, retry_at=retry_at)


def call_options(config: CloudinaryConfig) -> dict[str, Any]:
    """The SDK's per-call options: the account's credentials, timeout, upload prefix."""
    options: dict[str, Any] = {
        "cloud_name": config.cloud_name,
        "api_key": config.api_key.get_secret_value(),
        "api_secret": config.api_secret.get_secret_value(),
        "timeout": config.timeout,
    }
    if config.upload_prefix:
        options["upload_prefix"] = config.upload_prefix.rstrip("/")
    return options


@dataclass
class DeletionReport:
    deleted: list[Asset] = field(default_factory=list)
    not_found: list[Asset] = field(default_factory=list)
    calls: int = 0


def batches(assets: Iterable[Asset], size: int) -> list[tuple[str, str, list[Asset]]]:
    """(resource type, delivery type, up to `size` assets) for each Admin API call."""
    ordered = sorted(set(assets))
    result = []
    for (resource_type, delivery_type), group in groupby(
        ordered, key=lambda asset: (asset.resource_type, asset.delivery_type)
    ):
        members = list(group)
        for start in range(0, len(members), size):
            result.append((resource_type, delivery_type, members[start : start + size]))
    return result


def _http_date_to_datetime(value: Any) -> datetime | None:
    """The SDK's parsed X-FeatureRateLimit-Reset (a time tuple, GMT) as a datetime."""
    if not value:
        return None
    try:
        return datetime.fromtimestamp(calendar.timegm(value[:6]), UTC)
    except (TypeError, ValueError, OverflowError):
        return None


def _retry_at_from_message(message: str) -> datetime | None:
    found = _TRY_AGAIN.search(message)
    if not found:
        return None
    try:
        return datetime.fromisoformat(found[1].replace(" ", "T")).replace(tzinfo=UTC)
    except ValueError:
        return None


class CloudinaryDeleter:
    """Deletes assets of one Cloudinary account; remembers its rate-limit window."""

    def __init__(self, config: CloudinaryConfig) -> None:
        self.config = config
        self.delivery = DeliveryConfig.of(config.cloud_name, config.domains)
        self.batch_size = max(1, min(config.batch_size, MAX_IDS_PER_CALL))
        self._lock = threading.Lock()
        self._blocked_until: datetime | None = None

    async def delete(self, assets: Sequence[Asset]) -> DeletionReport:
        report = DeletionReport()
        for resource_type, delivery_type, group in batches(assets, self.batch_size):
            done = await asyncio.to_thread(self._delete_batch, resource_type, delivery_type, group)
            report.calls += done.calls
            report.deleted += done.deleted
            report.not_found += done.not_found
        return report

    def _delete_batch(
        self, resource_type: str, delivery_type: str, assets: list[Asset]
    ) -> DeletionReport:
        by_id = {asset.public_id: asset for asset in assets}
        report = DeletionReport()
        statuses: dict[str, str] = {}
        cursor: str | None = None
        for _ in range(MAX_CURSOR_ROUNDS):
            response = self._call(resource_type, delivery_type, list(by_id), cursor)
            report.calls += 1
            statuses.update(
                {str(key): str(value) for key, value in response.get("deleted", {}).items()}
            )
            cursor = response.get("next_cursor")
            if not (response.get("partial") and cursor):
                break
        undone = {
            public_id: statuses.get(public_id, "missing from the answer") for public_id in by_id
        }
        undone = {key: value for key, value in undone.items() if value not in DONE_STATUSES}
        if undone:
            sample = ", ".join(f"{key}: {value}" for key, value in list(undone.items())[:5])
            raise TransientError(
                f"Cloudinary did not delete {len(undone)} of {len(by_id)} {resource_type}/"
                f"{delivery_type} asset(s) ({sample}); the job will try again"
            )
        for public_id, asset in by_id.items():
            (report.deleted if statuses[public_id] == "deleted" else report.not_found).append(asset)
        return report

    def _call(
        self, resource_type: str, delivery_type: str, public_ids: list[str], cursor: str | None
    ) -> Any:
        self._wait_for_rate_limit()
        options = call_options(self.config)
        if cursor:
            options["next_cursor"] = cursor
        action = f"deleting {len(public_ids)} {resource_type}/{delivery_type} asset(s)"
        started = time.monotonic()
        try:
            response = cloudinary.api.delete_resources(
                public_ids, resource_type=resource_type, type=delivery_type, **options
            )
        except cloudinary.exceptions.NotFound as error:
            # The whole call found nothing to delete (unknown type or ids): nothing left to do.
            logger.warning(
                "Cloudinary answered not found to %s: %s; counted as done", action, error
            )
            return {"deleted": {public_id: "not_found" for public_id in public_ids}}
        except Exception as error:
            raise self._translate(error, action) from error
        self._remember_rate_limit(response)
        logger.info(
            "Cloudinary: %s took %.0f ms",
            action,
            (time.monotonic() - started) * 1000,
            extra={"cloudinary_calls_remaining": getattr(response, "rate_limit_remaining", None)},
        )
        return response

    def _wait_for_rate_limit(self) -> None:
        with self._lock:
            blocked_until = self._blocked_until
        if blocked_until is not None and blocked_until > datetime.now(UTC):
            raise CloudinaryRateLimited(
                "the Cloudinary Admin API rate limit is used up until "
                f"{blocked_until:%Y-%m-%d %H:%M:%S} UTC; the job will run again then",
                blocked_until,
            )

    def _remember_rate_limit(self, response: Any) -> None:
        remaining = getattr(response, "rate_limit_remaining", None)
        reset_at = _http_date_to_datetime(getattr(response, "rate_limit_reset_at", None))
        with self._lock:
            self._blocked_until = reset_at if remaining == 0 else None

    def _translate(self, error: Exception, action: str) -> Exception:
        message = str(error)
        status_match = _STATUS.match(message)
        status = int(status_match[1]) if status_match else None
        reason = f"Cloudinary failed {action}: {message}"
        if isinstance(error, cloudinary.exceptions.RateLimited) or status in (420, 429):
            retry_at = _retry_at_from_message(message)
            with self._lock:
                if retry_at is None and self._blocked_until is not None:
                    retry_at = self._blocked_until
                self._blocked_until = retry_at
            return CloudinaryRateLimited(f"{reason} (rate limited)", retry_at)
        if isinstance(error, cloudinary.exceptions.AuthorizationRequired) or status == 401:
            return PermanentError(
                f"{reason}. Cloudinary rejected the API key or secret (401): check CLOUDINARY_URL "
                "(or CLOUDINARY_API_KEY / CLOUDINARY_API_SECRET) for this cloud"
            )
        if isinstance(error, cloudinary.exceptions.NotAllowed) or status == 403:
            return PermanentError(f"{reason}. The API key may not delete assets (403)")
        if isinstance(error, cloudinary.exceptions.GeneralError) or (status and status >= 500):
            # 5xx, socket errors, timeouts and unreadable answers (a proxy's HTML page).
            return SinkUnavailable(SINK, reason)
        if isinstance(error, cloudinary.exceptions.Error) or status is not None:
            return PermanentError(reason)
        return PermanentError(f"{reason} ({type(error).__name__})")


#: The app's one CloudinaryDeleter, in its Services (procqueue/images/feature.py provides
#: it); None when the deployment has no Cloudinary credentials.
CLOUDINARY_DELETER: ServiceKey[CloudinaryDeleter | None] = ServiceKey("cloudinary")


def cloudinary_deleter(services: Services) -> CloudinaryDeleter | None:
    """The Cloudinary deleter the app's jobs share (None: Cloudinary is not configured)."""
    return services.get(CLOUDINARY_DELETER)
