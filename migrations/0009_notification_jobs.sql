-- The job each notification channel is delivered by: task, queue and lock prefix
-- (lock and queueing lock are prefix || notification id). Written by every
-- `procqueue migrate` from the notifications slice's job specs
-- (procqueue/notifications/jobs.py), so that procqueue.enqueue_notification
-- (sql/triggers/notifications.sql) reads the names instead of spelling them.
CREATE TABLE procqueue.notification_jobs (
    channel text PRIMARY KEY,
    task_name text NOT NULL,
    queue_name text NOT NULL,
    lock_prefix text NOT NULL
);
REVOKE ALL ON procqueue.notification_jobs FROM PUBLIC;
