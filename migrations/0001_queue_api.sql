-- procqueue's own objects live in the `procqueue` schema; Procrastinate's in
-- `procrastinate`. Neither is reachable by Supabase's API roles (invariant 7).

CREATE SCHEMA IF NOT EXISTS procqueue;
REVOKE ALL ON SCHEMA procqueue FROM PUBLIC;
REVOKE ALL ON SCHEMA procrastinate FROM PUBLIC;

-- Graphile Worker's add_job pattern: enqueue from plain SQL. A job with a
-- queueing lock that is already waiting is coalesced (ON CONFLICT DO NOTHING),
-- so the caller's statement never fails on it. Returns the new job id, or NULL
-- when the job was coalesced into a waiting one.
CREATE FUNCTION procqueue.add_job(
    task_name text,
    args jsonb,
    queue_name text DEFAULT 'default',
    job_lock text DEFAULT NULL,
    queueing_lock text DEFAULT NULL,
    run_at timestamptz DEFAULT NULL
)
    RETURNS bigint
    LANGUAGE sql
    SECURITY DEFINER
    SET search_path = procrastinate, pg_catalog, pg_temp
AS $$
    INSERT INTO procrastinate.procrastinate_jobs
        (queue_name, task_name, lock, queueing_lock, args, scheduled_at)
    VALUES (queue_name, task_name, job_lock, queueing_lock, args, run_at)
    ON CONFLICT (queueing_lock) WHERE status = 'todo' DO NOTHING
    RETURNING id;
$$;

-- Writers of an entity hold this key shared until they commit; a sync job takes
-- it exclusively before reading the row, so it never reads a state older than a
-- write whose job was coalesced into it. 1024 buckets per entity bound the
-- number of locks one statement can take.
CREATE FUNCTION procqueue.sync_lock_key(entity text, entity_id text)
    RETURNS bigint
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT (hashtext('procqueue:' || entity)::bigint << 32) | (hashtext(entity_id) & 1023)::bigint;
$$;

-- Every failed attempt of a job, with its reason (Procrastinate keeps none).
CREATE TABLE procqueue.job_errors (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id bigint NOT NULL,
    attempt integer NOT NULL,
    task_name text NOT NULL,
    queue_name text NOT NULL,
    error_type text NOT NULL,
    message text NOT NULL,
    traceback text NOT NULL,
    transient boolean NOT NULL,
    final boolean NOT NULL,
    occurred_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_errors_job_id_idx ON procqueue.job_errors (job_id);
CREATE INDEX job_errors_occurred_at_idx ON procqueue.job_errors (occurred_at);

REVOKE ALL ON ALL TABLES IN SCHEMA procqueue FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA procqueue FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA procrastinate FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA procrastinate FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA procrastinate FROM PUBLIC;
