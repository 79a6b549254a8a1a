"""`notification:<channel>` tasks on queue `notifications`: deliver one
notification on one channel (procqueue.notifications.dispatch).

Channels are built on first use. A channel with no settings at all (no SMTP
host, no FCM key) records its notifications as skipped, with the reason; one
whose settings are wrong (no sender, an unreadable key) fails its jobs at once
with what to fix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from procrastinate import JobContext

from procqueue.notifications.channel import Channel, UnconfiguredChannel
from procqueue.notifications.dispatch import Dispatcher
from procqueue.notifications.email import EmailChannel
from procqueue.notifications.fcm import FcmClient, FcmConfig
from procqueue.notifications.push import PushChannel
from procqueue.notifications.smtp import SmtpConfig
from procqueue.notifications.templates import Templates
from procqueue.queue.retry import BackoffRetry
from procqueue.runtime import ProcqueueApp
from procqueue.settings import Settings

QUEUE = "notifications"


def email_channel(settings: Settings) -> Channel:
    if not settings.smtp_host:
        return UnconfiguredChannel("email", "email is not configured (PROCQUEUE_SMTP_HOST unset)")
    return EmailChannel(SmtpConfig.from_settings(settings))


def push_channel(settings: Settings) -> Channel:
    if not (settings.fcm_service_account_file or settings.fcm_service_account_json):
        return UnconfiguredChannel(
            "push", "push is not configured (PROCQUEUE_FCM_SERVICE_ACCOUNT_FILE unset)"
        )
    return PushChannel(FcmClient(FcmConfig.from_settings(settings)), settings.push_tokens_table)


#: Every channel, by name (task `notification:<name>`). SMS would be one more entry.
CHANNELS: dict[str, Callable[[Settings], Channel]] = {
    "email": email_channel,
    "push": push_channel,
}


class _LazyDispatcher:
    """Builds the channel (and its clients and token cache) once, on first use."""

    def __init__(self, settings: Settings, templates: Templates, factory: Callable[..., Channel]):
        self._settings = settings
        self._templates = templates
        self._factory = factory
        self._dispatcher: Dispatcher | None = None

    def get(self) -> Dispatcher:
        if self._dispatcher is None:
            self._dispatcher = Dispatcher(
                self._factory(self._settings), self._templates, self._settings.notifications_table
            )
        return self._dispatcher


def register(app: ProcqueueApp, retry: BackoffRetry) -> None:
    settings = app.services.settings
    templates = Templates(settings.default_locale, settings.notification_templates_dir)
    for name, factory in CHANNELS.items():
        _register_channel(app, name, _LazyDispatcher(settings, templates, factory), retry)


def _register_channel(
    app: ProcqueueApp, name: str, dispatcher: _LazyDispatcher, retry: BackoffRetry
) -> None:
    async def deliver(context: JobContext, /, **args: Any) -> str:
        return await dispatcher.get().run(app.pool, args, context.job.id)

    app.task(name=f"notification:{name}", queue=QUEUE, pass_context=True, retry=retry)(deliver)
