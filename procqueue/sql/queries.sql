-- Named queries, in the manner of Procrastinate's sql/queries.sql.
-- A block starts with "-- name: description". {braced} names are identifiers
-- (tables, columns) filled in with psycopg.sql; %(named)s are parameters.

-- try_lock_entity: take an entity's sync key exclusively, without waiting
SELECT pg_try_advisory_xact_lock(procqueue.sync_lock_key(%(entity)s, %(id)s)) AS locked;

-- read_entity_row: the current row of one entity, key and document columns
SELECT {columns} FROM {schema}.{table} WHERE {primary_key} = %(id)s;

-- read_entity_rows: every row of an entity's table, key and document columns
SELECT {columns} FROM {schema}.{table} ORDER BY {primary_key};

-- insert_job_error: record a failed attempt of a job
INSERT INTO procqueue.job_errors
    (job_id, attempt, task_name, queue_name, error_type, message, traceback, transient, final)
VALUES
    (%(job_id)s, %(attempt)s, %(task_name)s, %(queue_name)s, %(error_type)s, %(message)s,
     %(traceback)s, %(transient)s, %(final)s);

-- missing_table: whether a configured table exists
SELECT to_regclass(%(table)s) IS NULL AS missing;

-- table_columns: the columns of a table
SELECT attname AS name
FROM pg_attribute
WHERE attrelid = to_regclass(%(table)s) AND attnum > 0 AND NOT attisdropped;

-- applied_migrations: what `procqueue migrate` has applied, with checksums
SELECT name, checksum FROM procqueue.schema_migrations;

-- record_migration: remember an applied migration
INSERT INTO procqueue.schema_migrations (name, checksum) VALUES (%(name)s, %(checksum)s)
ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now();

-- queue_counts: jobs per status, for tests and the CLI
SELECT status::text AS status, count(*) AS count
FROM procrastinate.procrastinate_jobs GROUP BY status;

-- notification_row: one row of the notifications table, for a notification:<channel> job
SELECT id::text AS id, recipient_user_id::text AS recipient, type, data
FROM {schema}.{table} WHERE id = %(id)s;

-- notification_recipient: a user's address book and locale (raw_user_meta_data.locale)
SELECT u.id::text AS user_id, u.email, to_jsonb(u) ->> 'phone' AS phone,
       to_jsonb(u) -> 'raw_user_meta_data' ->> 'locale' AS locale
FROM auth.users AS u WHERE u.id = %(user_id)s;

-- notification_channel_enabled: whether a user takes a notification type on a channel
SELECT coalesce((
    SELECT enabled FROM procqueue.notification_preferences
    WHERE user_id = %(user_id)s AND channel = %(channel)s AND type IN (%(type)s, '*')
    ORDER BY type = '*' LIMIT 1
), true) AS enabled;

-- notification_done_targets: targets of a notification already delivered or skipped
SELECT target FROM procqueue.notification_deliveries
WHERE notification_id = %(notification_id)s AND channel = %(channel)s;

-- record_notification_delivery: remember one delivered (or skipped) target
INSERT INTO procqueue.notification_deliveries
    (notification_id, channel, target, status, recipient_user_id, notification_type, detail,
     job_id)
VALUES
    (%(notification_id)s, %(channel)s, %(target)s, %(status)s, %(recipient)s, %(type)s,
     %(detail)s, %(job_id)s)
ON CONFLICT (notification_id, channel, target) DO NOTHING;

-- notify: enqueue a notification without a row (procqueue.notify)
SELECT procqueue.notify(%(recipient)s, %(type)s, %(data)s, %(notification_id)s, %(channels)s);

-- push_tokens_of_user: the device tokens of one user
SELECT token FROM {schema}.{table}
WHERE user_id = %(user_id)s AND token IS NOT NULL AND token <> '' ORDER BY token;

-- delete_push_token: forget a device token FCM no longer accepts
DELETE FROM {schema}.{table} WHERE token = %(token)s;

-- image_reference_candidates: URLs of one image column (text or text[]) containing a needle
SELECT found.url
FROM {schema}.{table} AS t
CROSS JOIN LATERAL procqueue.image_urls(to_jsonb(t.{column})) AS found (url)
WHERE EXISTS (
    SELECT FROM unnest(%(needles)s::text[]) AS needle (value)
    WHERE strpos(found.url, needle.value) > 0
)

-- image_cleanup_jobs: the image URLs the queue has seen removed, with their job's status
SELECT j.id, j.status::text AS status, url.value AS url
FROM procrastinate.procrastinate_jobs AS j
CROSS JOIN LATERAL jsonb_array_elements_text(
    CASE WHEN jsonb_typeof(j.args -> 'urls') = 'array' THEN j.args -> 'urls' ELSE '[]' END
) AS url (value)
WHERE j.task_name = %(task_name)s
ORDER BY j.id;

-- health_queues: per-queue health (migration 0006)
SELECT * FROM procqueue.queue_stats();

-- health_tasks: per-task health over a window (migration 0006)
SELECT * FROM procqueue.task_stats(%(since)s);

-- health_workers: every worker's heartbeat and jobs in hand (migration 0006)
SELECT * FROM procqueue.worker_stats(%(stalled_after)s);

-- health_storage: size and dead tuples of every queue table (migration 0006)
SELECT * FROM procqueue.storage_health;

-- failed_jobs: failed jobs, newest first, with their last recorded error
SELECT j.id, j.task_name::text AS task_name, j.queue_name::text AS queue_name, j.attempts,
       (SELECT max(e.at) FROM procrastinate.procrastinate_events AS e
        WHERE e.job_id = j.id AND e.type = 'failed') AS failed_at,
       err.error_type, err.message, err.traceback
FROM procrastinate.procrastinate_jobs AS j
LEFT JOIN LATERAL (
    SELECT x.error_type, x.message, x.traceback
    FROM procqueue.job_errors AS x
    WHERE x.job_id = j.id
    ORDER BY x.id DESC
    LIMIT 1
) AS err ON true
WHERE j.status = 'failed' AND (%(task)s::text IS NULL OR j.task_name = %(task)s)
ORDER BY j.id DESC
LIMIT %(limit)s;

-- failed_job_ids: ids of failed jobs, optionally of one task
SELECT j.id FROM procrastinate.procrastinate_jobs AS j
WHERE j.status = 'failed' AND (%(task)s::text IS NULL OR j.task_name = %(task)s)
ORDER BY j.id;

-- job_status: the status of one job (NULL row: no such job)
SELECT status::text AS status FROM procrastinate.procrastinate_jobs WHERE id = %(job_id)s;

-- retry_failed_job: put a failed job back in the queue, due now
SELECT procrastinate.procrastinate_retry_job_v2(%(job_id)s, now(), NULL, NULL, NULL);

-- cancel_job: cancel a waiting job, or ask the worker running it to abort
SELECT procrastinate.procrastinate_cancel_job_v1(%(job_id)s, true, false) AS id;

-- prune_finished_jobs: delete jobs of one final status that ended before the cutoff, one batch, walking the end events oldest first from (after_at, after_id)
WITH candidates AS MATERIALIZED (
    SELECT e.id, e.job_id, e.at
    FROM procrastinate.procrastinate_events AS e
    WHERE e.type = %(status)s::text::procrastinate.procrastinate_job_event_type
      AND e.at < %(cutoff)s
      AND e.at >= %(after_at)s
      AND (e.at, e.id) > (%(after_at)s, %(after_id)s)
    ORDER BY e.at, e.id
    LIMIT %(batch_size)s
),
doomed AS (
    SELECT j.id
    FROM candidates AS c
    JOIN procrastinate.procrastinate_jobs AS j ON j.id = c.job_id
    WHERE j.status = %(status)s::text::procrastinate.procrastinate_job_status
      -- finished for good before the cutoff: nothing happened to it since
      AND NOT EXISTS (
          SELECT 1 FROM procrastinate.procrastinate_events AS later
          WHERE later.job_id = j.id AND later.at >= %(cutoff)s
      )
    FOR UPDATE OF j SKIP LOCKED
),
deleted AS (
    DELETE FROM procrastinate.procrastinate_jobs AS j
    USING doomed
    WHERE j.id = doomed.id
    RETURNING j.id
),
errors AS (
    DELETE FROM procqueue.job_errors AS x
    WHERE x.job_id = ANY (ARRAY(SELECT deleted.id FROM deleted))
)
SELECT (SELECT count(*) FROM deleted) AS deleted,
       (SELECT count(*) FROM candidates) AS scanned,
       last.at AS last_at,
       last.id AS last_id
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (
    SELECT c.at, c.id FROM candidates AS c ORDER BY c.at DESC, c.id DESC LIMIT 1
) AS last ON true;

-- prune_orphan_errors: delete one batch of old error rows whose job is gone
DELETE FROM procqueue.job_errors
WHERE id IN (
    SELECT x.id FROM procqueue.job_errors AS x
    WHERE x.occurred_at < %(cutoff)s
      AND NOT EXISTS (SELECT 1 FROM procrastinate.procrastinate_jobs AS j WHERE j.id = x.job_id)
    ORDER BY x.occurred_at
    LIMIT %(batch_size)s
);
