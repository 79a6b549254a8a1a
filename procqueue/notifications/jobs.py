"""The notifications slice's channels and their jobs, in one registry (CHANNELS).

A channel's job is `notification:<channel>` on queue `notifications`, one per
channel of a notification, locked on the channel and the notification's id (never
delivered by two jobs at once; a second enqueue while one waits is coalesced).
The job specs, the schema step that tells the SQL which channels exist
(procqueue/notifications/schema.py) and the tasks (tasks.py) all read CHANNELS:
adding a channel (SMS) is a module with its class and factory (like email.py),
its settings in settings.py, and one entry here; a rule naming a channel not
listed enqueues nothing for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from procqueue.notifications import fcm, smtp
from procqueue.notifications.channel import Channel
from procqueue.notifications.email import email_channel
from procqueue.notifications.push import push_channel
from procqueue.queue.jobs import JobSpec
from procqueue.settings import CoreSettings, SchemaConfig

QUEUE = "notifications"


@dataclass(frozen=True)
class ChannelSpec:
    """One delivery channel: its name, the outside service it sends through (its
    outages open one circuit, queue/circuit.py) and how the app makes it from the
    settings (made on first use, owned by the app's Services)."""

    name: str
    sink: str
    make: Callable[[CoreSettings], Channel]

    @property
    def job(self) -> JobSpec:
        """Args {"notification_id": "<id>"} (plus recipient, type and data from
        procqueue.notify); lock `notification:<channel>:<id>`."""
        task_name = f"notification:{self.name}"
        return JobSpec(task_name, QUEUE, lock_prefix=f"{task_name}:", sink=self.sink)


#: Every delivery channel, by name.
CHANNELS: dict[str, ChannelSpec] = {
    spec.name: spec
    for spec in (
        ChannelSpec("email", smtp.SINK, email_channel),
        ChannelSpec("push", fcm.SINK, push_channel),
    )
}


def job_specs(schema: SchemaConfig) -> list[JobSpec]:
    return [spec.job for spec in CHANNELS.values()]
