"""The notifications slice's jobs: `notification:<channel>` on queue
`notifications`, one per channel of a notification, locked on the channel and
the notification's id (never delivered by two jobs at once; a second enqueue
while one waits is coalesced)."""

from __future__ import annotations

from procqueue.queue.jobs import JobSpec
from procqueue.settings import SchemaConfig

QUEUE = "notifications"
#: Every delivery channel, and the service it sends through (its outages open one
#: circuit, queue/circuit.py); a rule naming another channel enqueues nothing for it.
SMTP_SINK, FCM_SINK = "smtp", "fcm"
SINKS = {"email": SMTP_SINK, "push": FCM_SINK}
CHANNELS = tuple(SINKS)


def delivery_job(channel: str) -> JobSpec:
    """Args {"notification_id": "<id>"} (plus recipient, type and data from
    procqueue.notify); lock `notification:<channel>:<id>`."""
    task_name = f"notification:{channel}"
    return JobSpec(task_name, QUEUE, lock_prefix=f"{task_name}:", sink=SINKS.get(channel))


def job_specs(schema: SchemaConfig) -> list[JobSpec]:
    return [delivery_job(channel) for channel in CHANNELS]
