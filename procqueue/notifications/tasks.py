"""`notification:<channel>` tasks on queue `notifications`: deliver one
notification on one channel (procqueue.notifications.dispatch), for every channel
of CHANNELS (procqueue/notifications/jobs.py).

Channels are built on first use and owned by the app's Services (key
`notification:<name>`, closed by `app.services.aclose()`). A channel with no
settings at all (no SMTP host, no FCM key) records its notifications as skipped,
with the reason; one whose settings are wrong (no sender, an unreadable key)
fails its jobs at once with what to fix.
"""

from __future__ import annotations

import functools
from typing import Any

from procrastinate import JobContext

from procqueue.engine.app import ProcqueueApp
from procqueue.engine.services import ServiceKey, Services
from procqueue.notifications.channel import Channel
from procqueue.notifications.dispatch import Dispatcher
from procqueue.notifications.jobs import CHANNELS, ChannelSpec
from procqueue.notifications.settings import NotificationSettings
from procqueue.notifications.templates import Templates


def channel_key(name: str) -> ServiceKey[Channel]:
    return ServiceKey(f"notification:{name}")


def notification_channel(services: Services, name: str) -> Channel:
    """The app's channel `name` (made on first use)."""
    return services.get(channel_key(name))


async def _close(channel: Channel) -> None:
    await channel.aclose()


def provide_channels(services: Services) -> None:
    """Put every channel of CHANNELS in the app's Services, each made on first use."""
    for name, spec in CHANNELS.items():
        services.provide(channel_key(name), functools.partial(spec.make, services.settings), _close)


def register(app: ProcqueueApp) -> None:
    """`notification:<channel>` for every channel of CHANNELS (provided by
    `provide_channels`, which procqueue/notifications/feature.py calls first)."""
    settings = app.services.settings.section(NotificationSettings)
    templates = Templates(settings.default_locale, settings.notification_templates_dir)
    for spec in CHANNELS.values():
        _register_channel(app, spec, templates)


def _register_channel(app: ProcqueueApp, spec: ChannelSpec, templates: Templates) -> None:
    table = app.services.settings.notifications_table

    async def deliver(context: JobContext, /, **args: Any) -> str:
        dispatcher = Dispatcher(notification_channel(app.services, spec.name), templates, table)
        return await dispatcher.run(app.pool, args, context.job.id)

    app.task_of(spec.job, pass_context=True)(deliver)
