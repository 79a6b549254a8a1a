-- Named queries, in the manner of Procrastinate's sql/queries.sql.
-- A block starts with "-- name: description". {braced} names are identifiers
-- (tables, columns) filled in with psycopg.sql; %(named)s are parameters.

-- try_lock_entity: take an entity's sync key exclusively, without waiting
SELECT pg_try_advisory_xact_lock(procqueue.sync_lock_key(%(entity)s, %(id)s)) AS locked;

-- read_entity_row: the current row of one entity: its key and its search document (entity_document_columns)
SELECT {columns} FROM {schema}.{table} AS t WHERE t.{primary_key} = %(id)s;

-- read_entity_rows: every row of an entity's table: key and search document (entity_document_columns)
SELECT {columns} FROM {schema}.{table} AS t ORDER BY t.{primary_key};

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

-- notification_row: one row of the notifications table, for a notification:<channel> job
SELECT id::text AS id, recipient_user_id::text AS recipient, type, data
FROM {schema}.{table} WHERE id = %(id)s;

-- notification_recipient: a user's address book and locale, from auth.users (sql/notification_recipient.sql)
SELECT user_id, email, phone, locale FROM procqueue.notification_recipient(%(user_id)s);

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

-- roll_up_task_stats: roll up the oldest completed hours for long task_stats windows, at most max_hours (migration 0017)
SELECT procqueue.roll_up_task_stats(%(max_hours)s) AS hours;

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

-- job_status: the status of one job (NULL row: no such job)
SELECT status::text AS status FROM procrastinate.procrastinate_jobs WHERE id = %(job_id)s;

-- retry_failed_job: put a failed job back in the queue, due now; a retry by hand is not an attempt (procrastinate_retry_job_v2 would count one)
UPDATE procrastinate.procrastinate_jobs SET status = 'todo', scheduled_at = now()
WHERE id = %(job_id)s AND status = 'failed';

-- cancel_job: cancel a waiting job, or ask the worker running it to abort
SELECT procrastinate.procrastinate_cancel_job_v1(%(job_id)s, true, false) AS id;

-- prune_finished_jobs: delete jobs of one final status that ended before the cutoff, one batch, walking the end-event index oldest first from after_at
WITH candidates AS MATERIALIZED (
    SELECT e.job_id, e.at
    FROM procrastinate.procrastinate_events AS e
    WHERE e.type = %(event_type)s::procrastinate.procrastinate_job_event_type
      AND e.at < %(cutoff)s
      AND e.at >= %(after_at)s
    ORDER BY e.at
    LIMIT %(batch_size)s
),
doomed AS (
    SELECT j.id
    FROM candidates AS c
    JOIN procrastinate.procrastinate_jobs AS j ON j.id = c.job_id
    WHERE j.status = %(status)s::procrastinate.procrastinate_job_status
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
       (SELECT max(c.at) FROM candidates AS c) AS last_at;

-- prune_orphan_errors: delete one batch of old error rows whose job is gone
DELETE FROM procqueue.job_errors
WHERE id IN (
    SELECT x.id FROM procqueue.job_errors AS x
    WHERE x.occurred_at < %(cutoff)s
      AND NOT EXISTS (SELECT 1 FROM procrastinate.procrastinate_jobs AS j WHERE j.id = x.job_id)
    ORDER BY x.occurred_at
    LIMIT %(batch_size)s
);

-- dashboard_jobs: one page of jobs by keyset ({filters}: fixed one-line conditions; {order}: ASC or DESC)
SELECT j.id, j.queue_name::text AS queue_name, j.task_name::text AS task_name,
       j.status::text AS status, j.attempts, j.lock, j.args, j.scheduled_at,
       (SELECT max(e.at) FROM procrastinate.procrastinate_events AS e
        WHERE e.job_id = j.id) AS updated_at
FROM procrastinate.procrastinate_jobs AS j
WHERE {filters}
ORDER BY j.id {order}
LIMIT %(limit)s;

-- dashboard_distinct_names: distinct values of a job column (task_name or
-- queue_name), one index probe each (skip scan)
WITH RECURSIVE names AS (
    (SELECT j.{column}::text AS name FROM procrastinate.procrastinate_jobs AS j
     ORDER BY j.{column} LIMIT 1)
    UNION ALL
    SELECT (SELECT j.{column}::text FROM procrastinate.procrastinate_jobs AS j
            WHERE j.{column} > names.name ORDER BY j.{column} LIMIT 1)
    FROM names WHERE names.name IS NOT NULL
)
SELECT name FROM names WHERE name IS NOT NULL;

-- dashboard_job: one job with every column the job page shows
SELECT j.id, j.queue_name::text AS queue_name, j.task_name::text AS task_name,
       j.status::text AS status, j.attempts, j.priority, j.lock, j.queueing_lock,
       j.args, j.scheduled_at, j.worker_id, j.abort_requested
FROM procrastinate.procrastinate_jobs AS j
WHERE j.id = %(job_id)s;

-- dashboard_job_events: the event timeline of one job, oldest first
SELECT e.type::text AS type, e.at
FROM procrastinate.procrastinate_events AS e
WHERE e.job_id = %(job_id)s
ORDER BY e.at, e.id;

-- dashboard_job_errors: every recorded failed attempt of one job, oldest first
SELECT x.attempt, x.error_type, x.message, x.traceback, x.transient, x.final, x.occurred_at
FROM procqueue.job_errors AS x
WHERE x.job_id = %(job_id)s
ORDER BY x.id;

-- dashboard_failed_per_queue: failed jobs per queue (the failed-jobs index)
SELECT j.queue_name::text AS queue_name, count(*) AS failed
FROM procrastinate.procrastinate_jobs AS j
WHERE j.status = 'failed'
GROUP BY 1;

-- dashboard_activity: attempts ended per time bucket (succeeded, retried, failed) over the last span
SELECT b.bucket,
       count(e.id) FILTER (WHERE e.type = 'succeeded') AS succeeded,
       count(e.id) FILTER (WHERE e.type = 'deferred_for_retry') AS retried,
       count(e.id) FILTER (WHERE e.type = 'failed') AS failed
FROM generate_series(
         date_bin(%(step)s::interval, now() - %(span)s::interval, timestamptz '2000-01-01'),
         now(), %(step)s::interval) AS b(bucket)
LEFT JOIN procrastinate.procrastinate_events AS e
       ON e.type IN ('succeeded', 'deferred_for_retry', 'failed')
      AND e.at >= b.bucket AND e.at < b.bucket + %(step)s::interval
GROUP BY b.bucket
ORDER BY b.bucket;

-- dashboard_failure_groups: failed jobs grouped by task and the type of their last error
SELECT j.task_name::text AS task_name,
       coalesce(err.error_type, '') AS error_type,
       count(*) AS jobs,
       min(err.seen) AS first_seen,
       max(err.seen) AS last_seen,
       (array_agg(err.message ORDER BY j.id DESC))[1] AS last_message,
       max(j.id) AS last_job_id
FROM procrastinate.procrastinate_jobs AS j
LEFT JOIN LATERAL (
    SELECT x.error_type, x.message, x.occurred_at FROM procqueue.job_errors AS x
    WHERE x.job_id = j.id ORDER BY x.id DESC LIMIT 1
) AS last ON true
CROSS JOIN LATERAL (
    -- when no error was recorded, the time of the failed event (looked up only then)
    SELECT last.error_type, last.message,
           coalesce(last.occurred_at, (SELECT max(e.at) FROM procrastinate.procrastinate_events AS e
                                       WHERE e.job_id = j.id AND e.type = 'failed')) AS seen
) AS err
WHERE j.status = 'failed'
GROUP BY 1, 2
ORDER BY last_seen DESC NULLS LAST, 1, 2;

-- lock_failed_jobs: lock failed jobs for a retry: all, or one task and last error type (empty type: no error recorded)
SELECT j.id
FROM procrastinate.procrastinate_jobs AS j
WHERE j.status = 'failed'
  AND (%(task)s::text IS NULL OR j.task_name = %(task)s)
  AND (%(error_type)s::text IS NULL OR %(error_type)s = coalesce((
        SELECT x.error_type FROM procqueue.job_errors AS x
        WHERE x.job_id = j.id ORDER BY x.id DESC LIMIT 1), ''))
  AND (%(job_id)s::bigint IS NULL OR j.id = %(job_id)s)
ORDER BY j.id
FOR UPDATE OF j;

-- cancel_waiting_job: cancel a job that is waiting (todo); NULL when it is not
SELECT procrastinate.procrastinate_cancel_job_v1(%(job_id)s, false, false) AS id;

-- record_action: write one audit row (who, what, when)
INSERT INTO procqueue.dashboard_actions (actor, remote_addr, action, target, job_ids, outcome)
VALUES (%(actor)s, %(remote_addr)s, %(action)s, %(target)s, %(job_ids)s, %(outcome)s)
RETURNING id;

-- dashboard_audit: the newest audit rows, keyset-paged by id
SELECT a.id, a.at, a.actor, a.remote_addr, a.action, a.target, a.job_ids, a.outcome
FROM procqueue.dashboard_actions AS a
WHERE (%(before)s::bigint IS NULL OR a.id < %(before)s)
ORDER BY a.id DESC
LIMIT %(limit)s;

-- dashboard_session_open: a new dashboard session, known by the SHA-256 of its token (migration 0015)
INSERT INTO procqueue.dashboard_sessions (token_hash, actor, user_id, email, remote_addr)
VALUES (%(token_hash)s, %(actor)s, %(user_id)s, %(email)s, %(remote_addr)s);

-- dashboard_session_find: the admin of a session that is younger than the lifetime
SELECT s.actor, s.user_id, s.email
FROM procqueue.dashboard_sessions AS s
WHERE s.token_hash = %(token_hash)s AND s.created_at > now() - %(lifetime)s::interval;

-- dashboard_session_revoke: end one session (sign-out)
DELETE FROM procqueue.dashboard_sessions WHERE token_hash = %(token_hash)s;

-- dashboard_sessions_prune: forget sessions older than the lifetime
DELETE FROM procqueue.dashboard_sessions WHERE created_at <= now() - %(lifetime)s::interval;

-- lock_publish_shared: a sync job's hold on its entity's publish key, until its write is done (docs/bulk.md)
SELECT pg_advisory_xact_lock_shared(procqueue.sync_publish_key(%(entity)s));

-- lock_publish_exclusive: a bulk job's or reindex chunk's hold on its entity's publish key
SELECT pg_advisory_xact_lock(procqueue.sync_publish_key(%(entity)s));

-- sync_stamp: the external version of this read, and the indexes a reindex is building
SELECT nextval('procqueue.sync_version') AS version,
       ARRAY(SELECT t.index_name FROM procqueue.search_targets AS t
             WHERE t.entity = %(entity)s ORDER BY t.index_name) AS targets;

-- read_entity_chunk: the current rows of a chunk of ids: key and search document (entity_document_columns)
SELECT {columns} FROM {schema}.{table} AS t WHERE t.{primary_key} = ANY(%(ids)s);

-- read_entity_page: one keyset page of an entity's rows, in key order: key and search document (entity_document_columns)
SELECT {columns} FROM {schema}.{table} AS t {after} ORDER BY t.{primary_key} LIMIT %(limit)s;

-- existing_entity_ids: which of these ids have a row
SELECT {primary_key}::text AS id FROM {schema}.{table} WHERE {primary_key} = ANY(%(ids)s);

-- existing_entity_ids_as_text: the same, for ids the key's type cannot hold
SELECT {primary_key}::text AS id FROM {schema}.{table} WHERE {primary_key}::text = ANY(%(ids)s);

-- entity_ids_after: every key after a resume point, in key order (a reindex's server-side cursor)
SELECT {primary_key}::text AS id FROM {schema}.{table} {after} ORDER BY {primary_key};

-- estimate_rows: the planner's row count of a table (cheap, for progress bars)
SELECT greatest(reltuples, 0)::bigint AS estimate FROM pg_class WHERE oid = to_regclass(%(table)s);

-- record_item_error: a document a bulk job could not write for good
INSERT INTO procqueue.sync_item_errors (job_id, entity, entity_id, index_name, status, reason)
VALUES (%(job_id)s, %(entity)s, %(entity_id)s, %(index_name)s, %(status)s, %(reason)s);

-- enqueue_job: a job from Python (procqueue/queue/jobs.py), through procqueue.add_job like the triggers
SELECT procqueue.add_job(%(task_name)s, %(args)s, %(queue_name)s, %(job_lock)s, %(queueing_lock)s,
                         coalesce(%(run_at)s, now() + make_interval(secs => %(delay)s)));

-- reindex_targets: the indexes being built for an entity, with their resume points
SELECT index_name, resume_after, copied FROM procqueue.search_targets WHERE entity = %(entity)s;

-- register_reindex_target: from now on every sync of the entity also writes this index
INSERT INTO procqueue.search_targets (entity, index_name) VALUES (%(entity)s, %(index_name)s)
ON CONFLICT (entity, index_name) DO NOTHING;

-- reindex_checkpoint: remember how far a reindex copied
UPDATE procqueue.search_targets SET resume_after = %(resume_after)s, copied = %(copied)s
WHERE entity = %(entity)s AND index_name = %(index_name)s;

-- drop_reindex_target: the index is live (or abandoned): syncs stop writing it separately
DELETE FROM procqueue.search_targets WHERE entity = %(entity)s AND index_name = %(index_name)s;

-- demo_database_state: a database's comment (the demo's marker) and how many sessions use it
SELECT shobj_description(d.oid, 'pg_database') AS comment,
       (SELECT count(*) FROM pg_stat_activity AS a WHERE a.datid = d.oid) AS sessions
FROM pg_database AS d WHERE d.datname = %(name)s;

-- demo_current_marker: the comment on this connection's database (the demo's marker, or not)
SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = current_database();

-- demo_has_sample_rows: whether the sample tables hold rows already (the demo seeds only empty ones)
SELECT EXISTS (SELECT FROM public.inventory_items) OR EXISTS (SELECT FROM public.listings);

-- preflight_schemas: the queue's schemas: present, and usable by this role (procqueue/preflight.py)
SELECT wanted.name, n.oid IS NOT NULL AS present,
       coalesce(has_schema_privilege(n.oid, 'USAGE'), false) AS usable
FROM unnest(%(schemas)s::text[]) WITH ORDINALITY AS wanted (name, position)
LEFT JOIN pg_namespace AS n ON n.nspname = wanted.name
ORDER BY wanted.position;

-- preflight_missing_names: which of these names no function, table or type of a schema has
SELECT wanted.name
FROM unnest(%(names)s::text[]) AS wanted (name)
JOIN pg_namespace AS n ON n.nspname = %(schema)s
WHERE NOT EXISTS (SELECT FROM pg_proc AS p WHERE p.pronamespace = n.oid AND p.proname = wanted.name)
  AND NOT EXISTS (SELECT FROM pg_class AS c WHERE c.relnamespace = n.oid AND c.relname = wanted.name)
  AND NOT EXISTS (SELECT FROM pg_type AS t WHERE t.typnamespace = n.oid AND t.typname = wanted.name)
ORDER BY 1;

-- preflight_missing_privileges: what this role lacks of what the worker uses: EXECUTE on the queue's functions, SELECT on its tables, and writing Procrastinate's
SELECT 'EXECUTE on function ' || p.oid::regprocedure::text AS missing
FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
WHERE n.nspname = ANY (%(schemas)s) AND p.prokind = 'f'
  AND NOT has_function_privilege(p.oid, 'EXECUTE')
UNION ALL
SELECT privilege || ' on table ' || c.oid::regclass::text
FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) AS privilege
WHERE n.nspname = ANY (%(schemas)s) AND c.relkind IN ('r', 'p')
  AND (privilege = 'SELECT' OR n.nspname = %(written)s)
  AND NOT has_table_privilege(c.oid, privilege)
ORDER BY 1;

-- preflight_tables: the tables the worker reads: present, readable, and whether row-level security filters them for this role
SELECT wanted.schema_name, wanted.table_name, c.oid IS NOT NULL AS present,
       coalesce(has_schema_privilege(c.relnamespace, 'USAGE')
                AND has_table_privilege(c.oid, 'SELECT'), false) AS readable,
       coalesce(row_security_active(c.oid), false) AS filtered,
       coalesce(c.relforcerowsecurity, false) AS forced
FROM unnest(%(schemas)s::text[], %(tables)s::text[]) WITH ORDINALITY
     AS wanted (schema_name, table_name, position)
LEFT JOIN pg_namespace AS n ON n.nspname = wanted.schema_name
LEFT JOIN pg_class AS c ON c.relnamespace = n.oid AND c.relname = wanted.table_name
ORDER BY wanted.position;

-- circuit_opened: a worker saw a sink go down (procqueue/queue/circuit.py)
INSERT INTO procqueue.sink_circuits (sink, is_open, opened_at, reason, updated_at)
VALUES (%(sink)s, true, %(opened_at)s, %(reason)s, now())
ON CONFLICT (sink) DO UPDATE
SET is_open = true, opened_at = EXCLUDED.opened_at, reason = EXCLUDED.reason, updated_at = now();

-- circuit_closed: a worker saw the sink answer again
UPDATE procqueue.sink_circuits SET is_open = false, updated_at = now() WHERE sink = %(sink)s;

-- open_circuits: the sinks whose circuit is open, for health
SELECT sink, opened_at, reason, updated_at FROM procqueue.sink_circuits
WHERE is_open ORDER BY sink;

-- worker_heartbeat: a worker's heartbeat, and whether its row is still there (false: pruned, taken for dead)
SELECT procrastinate.procrastinate_update_heartbeat_v1(%(worker_id)s),
       EXISTS (SELECT FROM procrastinate.procrastinate_workers WHERE id = %(worker_id)s) AS alive;

-- reclaim_worker_jobs: a worker registered again takes back its running jobs not rescued yet
UPDATE procrastinate.procrastinate_jobs SET worker_id = %(worker_id)s
WHERE id = ANY(%(job_ids)s::bigint[]) AND status = 'doing' AND worker_id IS NULL
RETURNING id;

-- reconcile_cursor: where an entity's reconciliation goes on (procqueue/search/reconcile.py)
INSERT INTO procqueue.reconcile_cursors (entity) VALUES (%(entity)s)
ON CONFLICT (entity) DO UPDATE SET updated_at = now()
RETURNING after_key;

-- reconcile_advance: remember the last key checked (NULL: the pass is over, start again)
UPDATE procqueue.reconcile_cursors
SET after_key = %(after_key)s, updated_at = now(),
    last_pass_ended_at = CASE WHEN %(after_key)s::text IS NULL THEN now() ELSE last_pass_ended_at END,
    pass_started_at = CASE WHEN after_key IS NULL THEN now() ELSE pass_started_at END
WHERE entity = %(entity)s;

-- entity_document_columns: what an entity read of row t returns (procqueue/search/document.py, docs/bulk.md): the key as text; the search document as JSON text, {fields} rendered by their types' rules, or NULL when the columns' text alone ({text_bytes}, measured without converting a huge value) is over {limit} bytes; and that size
t.{primary_key}::text AS {primary_key},
CASE WHEN {text_bytes} <= {limit}
     THEN (SELECT to_json(f)::text FROM (SELECT {fields}) AS f) END AS procqueue_document,
{text_bytes} AS procqueue_text_bytes

-- search_value: one field's JSON value by its type's rule ({scalar} on {value}); an array element by element ({element} on e.value)
CASE WHEN json_typeof({value}) = 'array'
     THEN (SELECT coalesce(json_agg({element} ORDER BY e.n), '[]')
           FROM json_array_elements({value}) WITH ORDINALITY AS e (value, n))
     ELSE {scalar} END

-- search_value_date: a date field's value: an ISO date or time with a four-digit year, else null ('infinity', '-infinity', BC, year 10000 on: Elasticsearch refuses them)
CASE WHEN json_typeof({value}) = 'string'
          AND {value}::text !~ '^"[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9](T[0-9:.+-]*)?"$'
     THEN NULL ELSE {value} END

-- search_value_number: a number field's value: null for NaN, an infinity, or a number outside the field type's range [{low}, {high}]; {number} makes one in range (of ({value}::text)::numeric) what the field stores
CASE WHEN json_typeof({value}) = 'number'
     THEN CASE WHEN ({value}::text)::numeric BETWEEN {low} AND {high} THEN {number} END
     WHEN json_typeof({value}) = 'string'
          AND lower({value}::text) IN ('"nan"', '"infinity"', '"-infinity"')
     THEN NULL ELSE {value} END

-- search_value_double: a number in range as the double Elasticsearch stores, as Python reads a double (one too small for a double is 0)
to_json(CASE WHEN abs({number}) < 1e-320 THEN 0 ELSE {number} END::float8)

-- column_text_bytes: about the size of a column's text, cheaply: its stored size when small, else the length of its text (no conversion for text types, whose length is in their header)
coalesce(CASE WHEN pg_column_size({column}) > 1024 THEN octet_length({column}::text)
              ELSE pg_column_size({column}) END, 0)

-- ids_without_pending_sync: which of these ids no waiting or running sync job covers
-- (a row job locked on it, or a bulk job carrying it): those the reconciliation repairs
WITH in_bulk AS MATERIALIZED (
    SELECT DISTINCT jsonb_array_elements_text(job.args -> 'ids') AS id
    FROM procrastinate.procrastinate_jobs AS job
    WHERE job.status IN ('todo', 'doing') AND job.task_name = ANY(%(tasks)s)
      AND jsonb_typeof(job.args -> 'ids') = 'array'
)
SELECT wanted.id FROM unnest(%(ids)s::text[]) AS wanted (id)
WHERE NOT EXISTS (
    SELECT FROM procrastinate.procrastinate_jobs AS job
    WHERE job.status IN ('todo', 'doing') AND job.lock = %(lock_prefix)s || wanted.id
      AND job.task_name = ANY(%(tasks)s)
)
AND NOT EXISTS (SELECT FROM in_bulk WHERE in_bulk.id = wanted.id);

-- walk_jobs_in_fetch_order: for the rest of this transaction, plan the claim below as Procrastinate's index of waiting jobs (priority, id) walked in order, stopping at the limit. The planner cannot estimate the claim's args tests, nor a burst of waiting jobs that ANALYZE has not seen yet: it took every waiting job, ran the lock test for each and sorted them (130-160 ms a claim of 99 at 20,000 waiting; 130 s with the statistics of an empty table) instead of 11 ms (benchmarks/RESULTS.md, "The claim read the whole backlog")
SELECT set_config('enable_sort', 'off', true), set_config('enable_bitmapscan', 'off', true);

-- claim_jobs_like: take up to %(limit)s more ready jobs of these tasks in one queue for this worker, whose args are one string %(key_arg)s (procqueue/queue/batch.py); the rules of Procrastinate's procrastinate_fetch_job_v2: a job whose lock has a running job, or a waiting one of higher priority or queued first, is not taken; highest priority, then oldest first; jobs another worker is taking are skipped
WITH candidate AS (
    SELECT jobs.id
    FROM procrastinate.procrastinate_jobs AS jobs
    WHERE jobs.status = 'todo'
      AND jobs.queue_name = %(queue)s
      AND jobs.task_name = ANY(%(task_names)s::text[])
      AND (jobs.scheduled_at IS NULL OR jobs.scheduled_at <= now())
      AND jsonb_typeof(jobs.args -> %(key_arg)s::text) = 'string'
      AND jobs.args - %(key_arg)s::text = '{}'::jsonb
      AND NOT EXISTS (
          SELECT 1 FROM procrastinate.procrastinate_jobs AS other_jobs
          WHERE jobs.lock IS NOT NULL
            AND other_jobs.lock = jobs.lock
            AND (other_jobs.status = 'doing'
                 OR (other_jobs.status = 'todo'
                     AND (other_jobs.priority > jobs.priority
                          OR (other_jobs.priority = jobs.priority AND other_jobs.id < jobs.id))))
      )
    ORDER BY jobs.priority DESC, jobs.id ASC
    LIMIT %(limit)s
    FOR UPDATE OF jobs SKIP LOCKED
)
UPDATE procrastinate.procrastinate_jobs AS jobs
SET status = 'doing', worker_id = %(worker_id)s
FROM candidate
WHERE jobs.id = candidate.id
RETURNING jobs.id, jobs.status, jobs.task_name, jobs.priority, jobs.lock, jobs.queueing_lock,
          jobs.args, jobs.scheduled_at, jobs.queue_name, jobs.attempts, jobs.worker_id;

-- try_lock_entities: take the sync keys of many rows of one entity exclusively, without waiting: the ids whose key this transaction now holds
SELECT wanted.id FROM unnest(%(ids)s::text[]) AS wanted (id)
WHERE pg_try_advisory_xact_lock(procqueue.sync_lock_key(%(entity)s, wanted.id));

-- finish_jobs: Procrastinate's finish of many jobs in one statement (procqueue/queue/finishing.py); if one of them is not running it raises and finishes none
SELECT procrastinate.procrastinate_finish_job_v1(
           j.id, j.status::procrastinate.procrastinate_job_status, j.delete_job)
FROM unnest(%(ids)s::bigint[], %(statuses)s::text[], %(deletes)s::boolean[])
     AS j (id, status, delete_job);
