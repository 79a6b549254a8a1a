-- One delivery job per channel of a notification: the channels of its type's rule
-- (procqueue.notification_rules) unless `channels` names them, each channel's job
-- as procqueue.notification_jobs describes it (written by `procqueue migrate` from
-- procqueue/notifications/jobs.py). A channel with no job there enqueues nothing
-- and raises a warning (the caller's statement never fails on it). The job's lock
-- and queueing lock are the channel's prefix and the notification id, so one
-- notification is never delivered by two jobs at once and a second enqueue while
-- the first waits is coalesced. Returns the number of jobs enqueued. Replaces
-- migration 0005's version; re-applied by every `procqueue migrate`.
CREATE OR REPLACE FUNCTION procqueue.enqueue_notification(
    notification_id text,
    notification_type text,
    args jsonb DEFAULT '{}',
    channels text[] DEFAULT NULL
)
    RETURNS integer
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    wanted text;
    job procqueue.notification_jobs;
    enqueued integer := 0;
BEGIN
    FOREACH wanted IN ARRAY coalesce(channels, procqueue.notification_channels(notification_type))
    LOOP
        SELECT * INTO job FROM procqueue.notification_jobs AS known WHERE known.channel = wanted;
        IF NOT FOUND THEN
            RAISE WARNING 'procqueue: notification % not sent on channel %: no such channel; '
                'fix procqueue.notification_rules or the channels passed', notification_id, wanted;
            CONTINUE;
        END IF;
        IF procqueue.add_job(
            task_name => job.task_name,
            args => coalesce(args, '{}'::jsonb)
                || jsonb_build_object('notification_id', notification_id),
            queue_name => job.queue_name,
            job_lock => job.lock_prefix || notification_id,
            queueing_lock => job.lock_prefix || notification_id
        ) IS NOT NULL THEN
            enqueued := enqueued + 1;
        END IF;
    END LOOP;
    RETURN enqueued;
END;
$$;
REVOKE ALL ON FUNCTION procqueue.enqueue_notification(text, text, jsonb, text[]) FROM PUBLIC;

-- The row trigger on the notifications table (public.notifications, or
-- PROCQUEUE_NOTIFICATIONS_TABLE): every inserted notification is enqueued as
-- above. The job carries the notification's id only; the worker reads the row
-- when it runs. The row is read through to_jsonb so that an odd id type or a NULL
-- never breaks the user's insert: a row without an id or a recipient enqueues
-- nothing. Re-applied by every `procqueue migrate`.
CREATE OR REPLACE FUNCTION procqueue.enqueue_notification_delivery()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    row_data jsonb := to_jsonb(NEW);
BEGIN
    IF row_data ->> 'id' IS NULL OR row_data ->> 'recipient_user_id' IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM procqueue.enqueue_notification(row_data ->> 'id', row_data ->> 'type');
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION procqueue.enqueue_notification_delivery() FROM PUBLIC;
