"""Succeeded work leaves the hot tables (migration 0026): a first-attempt success of
a job whose spec says `leaves_when_succeeded` (a drain per batch of synced changes,
the reconciliation), or of any job of the maintenance queue (the rescue every few
seconds, the prune), is written as one narrow row of procqueue.finished_attempts and
deleted from Procrastinate's jobs table, its events with it, in the finishing
transaction. The stats, charts and health read the log beside the events; the prune
deletes it after PROCQUEUE_PRUNE_SUCCEEDED_AFTER (docs/operations.md, "Pruning").

`procqueue migrate` attaches the trigger with the names from the job specs, so no SQL
file spells one."""

from __future__ import annotations

from collections.abc import Iterable

from psycopg import sql

from procqueue.queue.jobs import JobSpec
from procqueue.queue.maintenance import MAINTENANCE_QUEUE

#: Triggers of one event fire in name order: this name sorts after Procrastinate's
#: `procrastinate_trigger_status_events_update_v1`, whose `succeeded` event must be
#: written before the job goes (its foreign key). tests/test_finished_attempts.py
#: checks both names.
TRIGGER = "remove_logged_succeeded_job"


def attach_trigger_sql(specs: Iterable[JobSpec]) -> str:
    """The trigger, re-created with the current specs' task names. Procrastinate
    counts an attempt in `attempts` as it finishes the job: 1 is a first attempt; a job
    with an earlier failed or rescued attempt keeps its row and history (so does one
    postponed on its way: the trigger function checks)."""
    tasks = sorted({spec.task_name for spec in specs if spec.leaves_when_succeeded})
    leaving = sql.SQL("NEW.queue_name = {queue}").format(queue=sql.Literal(MAINTENANCE_QUEUE))
    if tasks:
        leaving = sql.SQL("{queue} OR NEW.task_name IN ({tasks})").format(
            queue=leaving, tasks=sql.SQL(", ").join(sql.Literal(task) for task in tasks)
        )
    return sql.SQL(
        "CREATE OR REPLACE TRIGGER {name}\n"
        "    AFTER UPDATE OF status ON procrastinate.procrastinate_jobs\n"
        "    FOR EACH ROW\n"
        "    WHEN (OLD.status = 'doing' AND NEW.status = 'succeeded' AND NEW.attempts <= 1\n"
        "          AND ({leaving}))\n"
        "    EXECUTE FUNCTION procqueue.log_succeeded_job_and_remove_it();\n"
    ).format(name=sql.Identifier(TRIGGER), leaving=leaving).as_string(None)
