-- Notifications: channel rules, user preferences, delivery records and the SQL
-- enqueue API. The trigger function on the notifications table lives in
-- sql/triggers/notifications.sql; `procqueue migrate` attaches it.

-- Which channels each notification type goes to. The row '*' is the rule for
-- every type without a row of its own. Operators change rules with plain SQL;
-- the trigger and procqueue.notify() read this table when they enqueue.
CREATE TABLE procqueue.notification_rules (
    type text PRIMARY KEY,
    channels text[] NOT NULL DEFAULT '{}'
        CHECK (array_position(channels, NULL) IS NULL),
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO procqueue.notification_rules (type, channels) VALUES
    ('LISTING_APPROVED', '{email,push}'),
    ('LISTING_REJECTED', '{email,push}'),
    ('NEW_OFFER', '{push}'),
    ('*', '{push}');

-- A user's switches. type '*' is the channel as a whole; a row for a given type
-- wins over it. No row: the channel is on.
CREATE TABLE procqueue.notification_preferences (
    user_id uuid NOT NULL,
    channel text NOT NULL,
    type text NOT NULL DEFAULT '*',
    enabled boolean NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, channel, type)
);

-- One row per notification, channel and target (the recipient's user id for a
-- channel-level outcome such as an email or an opt-out; a hash of the device
-- token for push), written right after each successful send. A job that runs
-- again skips every target that has a row.
CREATE TABLE procqueue.notification_deliveries (
    notification_id text NOT NULL,
    channel text NOT NULL,
    target text NOT NULL,
    status text NOT NULL CHECK (status IN ('delivered', 'skipped')),
    recipient_user_id uuid,
    notification_type text,
    detail text,
    job_id bigint,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (notification_id, channel, target)
);
CREATE INDEX notification_deliveries_recorded_at_idx
    ON procqueue.notification_deliveries (recorded_at);

-- The channels a type goes to: its rule, else the '*' rule, else none.
CREATE FUNCTION procqueue.notification_channels(notification_type text)
    RETURNS text[]
    LANGUAGE sql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(
        (SELECT channels FROM procqueue.notification_rules WHERE type = notification_type),
        (SELECT channels FROM procqueue.notification_rules WHERE type = '*'),
        '{}'::text[]
    );
$$;

-- One `notification:<channel>` job per channel, on queue `notifications`. The
-- job's lock and queueing lock are the notification and channel, so one
-- notification is never delivered by two jobs at once and a second enqueue
-- while the first waits is coalesced. Returns the number of jobs enqueued.
CREATE FUNCTION procqueue.enqueue_notification(
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
    channel text;
    lock_name text;
    enqueued integer := 0;
BEGIN
    FOREACH channel IN ARRAY coalesce(channels, procqueue.notification_channels(notification_type))
    LOOP
        lock_name := 'notification:' || channel || ':' || notification_id;
        IF procqueue.add_job(
            task_name => 'notification:' || channel,
            args => coalesce(args, '{}'::jsonb)
                || jsonb_build_object('notification_id', notification_id),
            queue_name => 'notifications',
            job_lock => lock_name,
            queueing_lock => lock_name
        ) IS NOT NULL THEN
            enqueued := enqueued + 1;
        END IF;
    END LOOP;
    RETURN enqueued;
END;
$$;

-- Application code's way to send a notification without a notifications row:
--   SELECT procqueue.notify('<user uuid>', 'NEW_OFFER', '{"listing_title": "Masa"}');
-- Enqueues in the caller's transaction (a rollback enqueues nothing), on the
-- channels of the type's rule unless `channels` names them. Pass the same
-- notification_id again and nothing already delivered is delivered twice.
-- Returns the notification id.
CREATE FUNCTION procqueue.notify(
    recipient uuid,
    type text,
    data jsonb DEFAULT '{}',
    notification_id uuid DEFAULT NULL,
    channels text[] DEFAULT NULL
)
    RETURNS uuid
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    id uuid := coalesce(notify.notification_id, gen_random_uuid());
BEGIN
    IF notify.recipient IS NULL OR notify.type IS NULL THEN
        RAISE EXCEPTION 'procqueue.notify needs a recipient and a type'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM procqueue.enqueue_notification(
        id::text,
        notify.type,
        jsonb_build_object(
            'recipient', notify.recipient,
            'type', notify.type,
            'data', coalesce(notify.data, '{}'::jsonb)
        ),
        notify.channels
    );
    RETURN id;
END;
$$;

-- Switch a channel off or on for a user (type '*': every type).
CREATE FUNCTION procqueue.set_notification_preference(
    user_id uuid,
    channel text,
    enabled boolean,
    type text DEFAULT '*'
)
    RETURNS void
    LANGUAGE sql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO procqueue.notification_preferences (user_id, channel, type, enabled)
    VALUES (user_id, channel, coalesce(type, '*'), enabled)
    ON CONFLICT ON CONSTRAINT notification_preferences_pkey
    DO UPDATE SET enabled = EXCLUDED.enabled, updated_at = now();
$$;

REVOKE ALL ON ALL TABLES IN SCHEMA procqueue FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA procqueue FROM PUBLIC;

-- On Supabase the backend's role may call the two public entry points; the API
-- roles anon and authenticated get nothing (invariant 7).
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'service_role') THEN
        GRANT USAGE ON SCHEMA procqueue TO service_role;
        GRANT EXECUTE ON FUNCTION procqueue.notify(uuid, text, jsonb, uuid, text[])
            TO service_role;
        GRANT EXECUTE ON FUNCTION
            procqueue.set_notification_preference(uuid, text, boolean, text) TO service_role;
    END IF;
END;
$$;
