"""`notification:<channel>` tasks on queue `notifications`: deliver one
notification on one channel (procqueue.notifications.dispatch).

Channels are built on first use and owned by the app's Services (key
`notification:<name>`, closed by `app.services.aclose()`). A channel with no
settings at all (no SMTP host, no FCM key) records its notifications as skipped,
with the reason; one whose settings are wrong (no sender, an unreadable key)
fails its jobs at once with what to fix.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from procrastinate import JobContext

from procqueue.notifications.channel import Channel, UnconfiguredChannel
from procqueue.notifications.dispatch import Dispatcher
from procqueue.notifications.email import EmailChannel
from procqueue.notifications.fcm import FcmClient
from procqueue.notifications.jobs import delivery_job
from procqueue.notifications.push import PushChannel
from procqueue.notifications.templates import Templates
from procqueue.queue.retry import BackoffRetry
from procqueue.runtime import ProcqueueApp, ServiceKey, Services
from procqueue.settings import Settings


def email_channel(settings: Settings) -> Channel:
    config = settings.smtp
    if config is None:
        return UnconfiguredChannel("email", "email is not configured (PROCQUEUE_SMTP_HOST unset)")
    return EmailChannel(config)


def push_channel(settings: Settings) -> Channel:
    config = settings.fcm
    if config is None:
        return UnconfiguredChannel(
            "push", "push is not configured (PROCQUEUE_FCM_SERVICE_ACCOUNT_FILE unset)"
        )
    return PushChannel(FcmClient(config), settings.push_tokens_table)


#: Every channel, by name (task `notification:<name>`). SMS would be one more entry.
CHANNELS: dict[str, Callable[[Settings], Channel]] = {
    "email": email_channel,
    "push": push_channel,
}


def channel_key(name: str) -> ServiceKey[Channel]:
    return ServiceKey(f"notification:{name}")


def notification_channel(services: Services, name: str) -> Channel:
    """The app's channel `name` (made on first use)."""
    return services.get(channel_key(name))


async def _close(channel: Channel) -> None:
    await channel.aclose()


def provide_channels(services: Services) -> None:
    """Put every channel of CHANNELS in the app's Services, each made on first use."""
    for name, factory in CHANNELS.items():
        services.provide(channel_key(name), functools.partial(factory, services.settings), _close)


def register(app: ProcqueueApp, retry: BackoffRetry) -> None:
    """`notification:<channel>` for every channel of CHANNELS (provided by
    `provide_channels`, which procqueue/notifications/feature.py calls first)."""
    settings = app.services.settings
    templates = Templates(settings.default_locale, settings.notification_templates_dir)
    for name in CHANNELS:
        _register_channel(app, name, templates, retry)


def _register_channel(
    app: ProcqueueApp, name: str, templates: Templates, retry: BackoffRetry
) -> None:
    table = app.services.settings.notifications_table

    async def deliver(context: JobContext, /, **args: Any) -> str:
        dispatcher = Dispatcher(notification_channel(app.services, name), templates, table)
        return await dispatcher.run(app.pool, args, context.job.id)

    spec = delivery_job(name)
    app.task(name=spec.task_name, queue=spec.queue, pass_context=True, retry=retry)(deliver)
