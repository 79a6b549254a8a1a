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
    LANGUAGE plpgsql  -- plpgsql caches its plan; a non-inlined SQL function re-plans per call
    SECURITY DEFINER
    SET search_path = procrastinate, pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    job_id bigint;
BEGIN
    INSERT INTO procrastinate.procrastinate_jobs
        (queue_name, task_name, lock, queueing_lock, args, scheduled_at)
    VALUES (add_job.queue_name, add_job.task_name, add_job.job_lock, add_job.queueing_lock,
            add_job.args, add_job.run_at)
    ON CONFLICT (queueing_lock) WHERE status = 'todo' DO NOTHING
    RETURNING id INTO job_id;
    RETURN job_id;
END;
$$;

-- Writers of an entity hold this key shared until they commit; a sync job takes
-- it exclusively before reading the row, so it never reads a state older than a
-- write whose job was coalesced into it. 1024 buckets per entity bound the
-- number of locks one statement can take. Inlinable (no SET clause): every name
-- in it is schema-qualified instead.
CREATE FUNCTION procqueue.sync_lock_key(entity text, entity_id text)
    RETURNS bigint
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
AS $$
    SELECT (pg_catalog.hashtext('procqueue:' OPERATOR(pg_catalog.||) entity)::bigint << 32)
        | (pg_catalog.hashtext(entity_id) & 1023)::bigint;
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
