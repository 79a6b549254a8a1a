"""The notifications slice's settings section (docs/notifications.md): templates,
the default locale, and each channel's service. It hands out `smtp` and `fcm`, the
configs the email and push channels take. A new channel's settings go here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from procqueue.errors import ConfigError
from procqueue.settings import Section

#: The SMTP port each security mode uses when PROCQUEUE_SMTP_PORT is unset.
SMTP_DEFAULT_PORTS = {"plain": 25, "starttls": 587, "tls": 465}


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


class NotificationSettings(Section):
    # The notifications and push tokens tables are the core's (the schema steps and
    # the worker's preflight read them): procqueue/settings.py.
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
