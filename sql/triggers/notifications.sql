-- The row trigger on the notifications table (public.notifications, or
-- PROCQUEUE_NOTIFICATIONS_TABLE): every inserted notification becomes one
-- `notification:<channel>` job per channel of its type's rule
-- (procqueue.notification_rules). The job carries the notification's id only;
-- the worker reads the row when it runs. The row is read through to_jsonb so
-- that an odd id type or a NULL never breaks the user's insert: a row without
-- an id or a recipient enqueues nothing. Re-applied by every `procqueue migrate`.
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
