"""Firebase Cloud Messaging, HTTP v1 API, with the service-account OAuth2 flow.

- Access tokens: google-auth signs a JWT assertion with the service account's
  private key and exchanges it at the token endpoint (the account's token_uri,
  or PROCQUEUE_FCM_TOKEN_URI). The token is cached until shortly before it
  expires; one refresh at a time; a 401 from FCM drops it.
- Sends: POST {base}/v1/projects/{project}/messages:send with aiohttp.

Outcomes of a send: a message name; UnregisteredToken for a token FCM reports as
UNREGISTERED (404) or as an invalid registration token (400 INVALID_ARGUMENT
naming the registration token);
SinkUnavailable for 429 and 5xx (its `retry_at` from Retry-After) and for network
errors; PermanentError for any other refusal.

The client takes an FcmConfig (`NotificationSettings.fcm`); it knows nothing of notifications
(procqueue/notifications/push.py turns its errors into the channel's).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import urllib3
from google.auth import exceptions as google_exceptions
from google.auth.transport.urllib3 import Request as Urllib3Request
from google.oauth2 import service_account

from procqueue.errors import ConfigError, PermanentError, SinkUnavailable, TransientError
from procqueue.notifications.settings import FcmConfig

#: The outside service push goes through: its outages open one circuit (queue/circuit.py).
SINK = "fcm"

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
# Keys FCM refuses in a message's data payload.
_RESERVED_DATA_KEYS = ("from", "notification", "message_type")
_RESERVED_DATA_PREFIXES = ("google", "gcm")


class UnregisteredToken(PermanentError):
    """FCM says the device token is dead for good (unregistered, or not a valid
    registration token): sending to it again can never work."""


def load_service_account(config: FcmConfig) -> dict[str, Any]:
    """The service-account key from PROCQUEUE_FCM_SERVICE_ACCOUNT_JSON or _FILE."""
    if config.service_account_json is not None:
        source, text = (
            "PROCQUEUE_FCM_SERVICE_ACCOUNT_JSON",
            (config.service_account_json.get_secret_value()),
        )
    elif config.service_account_file is not None:
        source = f"PROCQUEUE_FCM_SERVICE_ACCOUNT_FILE ({config.service_account_file})"
        try:
            text = config.service_account_file.read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"{source} cannot be read: {error.strerror}") from None
    else:
        raise ConfigError(
            "push is not configured: set PROCQUEUE_FCM_SERVICE_ACCOUNT_FILE (or _JSON) to a "
            "Firebase service-account key (or take 'push' out of procqueue.notification_rules)"
        )
    try:
        info = json.loads(text)
    except ValueError:
        raise ConfigError(f"{source} is not JSON: expected a service-account key file") from None
    if not isinstance(info, dict):
        raise ConfigError(f"{source} is not a service-account key (a JSON object)")
    return info


@dataclass(frozen=True)
class FcmAccount:
    """The service account's credentials and the project messages are sent to."""

    project_id: str
    credentials: service_account.Credentials = field(repr=False)

    @classmethod
    def load(cls, config: FcmConfig) -> FcmAccount:
        """Read and check the configured key; ConfigError says what to fix."""
        info = load_service_account(config)
        try:
            credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                info, scopes=[FCM_SCOPE]
            )
        except (ValueError, KeyError) as error:
            raise ConfigError(f"the FCM service-account key is unusable: {error}") from None
        if config.token_uri:
            credentials = credentials.with_token_uri(config.token_uri)
        project_id = config.project_id or info.get("project_id")
        if not project_id:
            raise ConfigError("set PROCQUEUE_FCM_PROJECT_ID: the service-account key names none")
        return cls(project_id=str(project_id), credentials=credentials)


class AccessTokens:
    """The service account's OAuth2 access token, cached until it nearly expires."""

    def __init__(self, credentials: service_account.Credentials, timeout: float) -> None:
        self._credentials = credentials
        self._http = urllib3.PoolManager(timeout=urllib3.Timeout(total=timeout), retries=False)
        self._lock = asyncio.Lock()

    async def get(self) -> str:
        async with self._lock:
            if not self._credentials.valid:
                await asyncio.to_thread(self._refresh)
            return str(self._credentials.token)

    def invalidate(self) -> None:
        self._credentials.token = None

    def close(self) -> None:
        """Close the token endpoint's connections."""
        self._http.clear()

    def _refresh(self) -> None:
        try:
            request = Urllib3Request(self._http)  # type: ignore[no-untyped-call]
            self._credentials.refresh(request)  # type: ignore[no-untyped-call]
        except google_exceptions.TransportError as error:
            raise SinkUnavailable(
                SINK, f"FCM token endpoint unreachable: {error}; will retry"
            ) from None
        except google_exceptions.RefreshError as error:
            if getattr(error, "retryable", False):
                raise SinkUnavailable(
                    SINK, f"FCM token endpoint failed: {error}; will retry"
                ) from None
            raise PermanentError(
                f"the token endpoint refused the FCM service account ({error}): check the "
                "key in PROCQUEUE_FCM_SERVICE_ACCOUNT_FILE / _JSON and its permissions"
            ) from None


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def data_payload(values: Mapping[str, Any]) -> dict[str, str]:
    """FCM data is string to string, without its reserved keys."""
    payload = {}
    for key, value in values.items():
        if key in _RESERVED_DATA_KEYS or key.lower().startswith(_RESERVED_DATA_PREFIXES):
            continue
        payload[key] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return payload


class FcmClient:
    """Sends one message to one device token. Reads the service-account key when
    made (ConfigError: the key is missing, unreadable or unusable)."""

    def __init__(self, config: FcmConfig) -> None:
        self.config = config
        self.account = FcmAccount.load(config)
        self.tokens = AccessTokens(self.account.credentials, config.timeout)

    @property
    def send_url(self) -> str:
        base = self.config.base_url.rstrip("/")
        return f"{base}/v1/projects/{self.account.project_id}/messages:send"

    async def aclose(self) -> None:
        self.tokens.close()

    async def send(
        self, token: str, title: str, body: str, data: Mapping[str, Any], label: str
    ) -> str:
        """Deliver; returns FCM's message name. `label` names the token in errors."""
        message = {
            "message": {
                "token": token,
                "notification": {"title": title, "body": body},
                "data": data_payload(data),
            }
        }
        access_token = await self.tokens.get()
        timeout = aiohttp.ClientTimeout(total=self.config.timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(
                    self.send_url,
                    json=message,
                    headers={"Authorization": f"Bearer {access_token}"},
                ) as response,
            ):
                text = await response.text()
                if response.status == 200:
                    return str(json.loads(text).get("name", ""))
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                raise self._refusal(response.status, text, retry_after, label)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise SinkUnavailable(
                SINK, f"FCM unreachable ({type(error).__name__}: {error}); will retry"
            ) from None

    def _refusal(self, status: int, text: str, retry_after: float | None, label: str) -> Exception:
        fcm_status, error_code, message = _parse_error(text)
        reply = f"HTTP {status} {error_code or fcm_status}: {message}".strip()
        # Only FCM's own verdict on the token removes it: a bare 404 (a wrong
        # PROCQUEUE_FCM_BASE_URL, say) must not wipe every user's tokens.
        if error_code == "UNREGISTERED":
            return UnregisteredToken(f"FCM says {label} is unregistered ({reply}); token removed")
        invalid = "INVALID_ARGUMENT" in (error_code, fcm_status)
        if status == 400 and invalid and "registration token" in message.lower():
            return UnregisteredToken(
                f"FCM says {label} is not a valid token ({reply}); token removed"
            )
        if status == 401:
            self.tokens.invalidate()
            return TransientError(f"FCM refused the access token ({reply}); will get a new one")
        if status == 429 or status >= 500:
            wait = None if retry_after is None else timedelta(seconds=retry_after)
            return SinkUnavailable(
                SINK,
                f"FCM is unavailable ({reply}); will retry",
                retry_at=None if wait is None else datetime.now(UTC) + wait,
            )
        return PermanentError(f"FCM refused the message to {label} ({reply})")


def _parse_error(text: str) -> tuple[str, str, str]:
    """(status, FCM error code, message) of an FCM error body."""
    try:
        error = json.loads(text).get("error", {})
    except (ValueError, AttributeError):
        return "", "", text[:200]
    if not isinstance(error, dict):
        return "", "", text[:200]
    codes = [
        detail.get("errorCode", "")
        for detail in error.get("details", [])
        if isinstance(detail, dict) and detail.get("errorCode")
    ]
    return str(error.get("status", "")), codes[0] if codes else "", str(error.get("message", ""))
