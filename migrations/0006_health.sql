-- Queue health in plain SQL: per queue, per task, per worker and per table.
-- Functions take their window/threshold as an argument; the views call them
-- with the defaults. Every query reads only what its window touches (recent
-- events, active jobs), never the whole retained history: see
-- benchmarks/health_queries.py for timings with 1,000,000 finished jobs.

-- The end of every attempt, by type and time: windows over recent events
-- ("failed in the last hour", "durations over the last hour") and pruning
-- (oldest finished jobs first) become index range scans.
CREATE INDEX procqueue_events_end_idx
    ON procrastinate.procrastinate_events (type, at)
    WHERE type IN ('succeeded', 'failed', 'deferred_for_retry', 'aborted', 'cancelled');

-- Waiting and running jobs per queue, and the oldest waiting one (lag),
-- answered from this small index alone.
CREATE INDEX procqueue_jobs_active_idx
    ON procrastinate.procrastinate_jobs (queue_name, status, scheduled_at, id)
    WHERE status IN ('todo', 'doing');

-- Failed jobs, newest first (`procqueue failed`, `procqueue retry --all-failed`).
CREATE INDEX procqueue_jobs_failed_idx
    ON procrastinate.procrastinate_jobs (id)
    WHERE status = 'failed';

-- The health functions turn JIT off: their plans look costly (many index
-- probes) but run in milliseconds, and JIT compilation alone would take
-- hundreds of them.

-- Per queue: waiting (due now), running, scheduled (future, first attempt),
-- scheduled for retry (future, after a failure), final failures in the last
-- hour and day, lag (seconds the oldest waiting job has been due) and jobs
-- finished per minute over the last 5 and 60 minutes. A queue appears while it
-- has active jobs or finished some in the last day.
CREATE FUNCTION procqueue.queue_stats()
    RETURNS TABLE (
        queue_name text,
        waiting bigint,
        running bigint,
        scheduled bigint,
        retry_scheduled bigint,
        failed_last_hour bigint,
        failed_last_day bigint,
        lag_seconds double precision,
        finished_per_minute_5m double precision,
        finished_per_minute_60m double precision
    )
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
    SET jit = off
AS $$
    WITH active AS (
        SELECT j.queue_name::text AS queue_name,
               count(*) FILTER (WHERE j.status = 'todo'
                                  AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())) AS waiting,
               count(*) FILTER (WHERE j.status = 'doing') AS running,
               count(*) FILTER (WHERE j.status = 'todo' AND j.scheduled_at > now()
                                  AND j.attempts = 0) AS scheduled,
               count(*) FILTER (WHERE j.status = 'todo' AND j.scheduled_at > now()
                                  AND j.attempts > 0) AS retry_scheduled
        FROM procrastinate.procrastinate_jobs AS j
        WHERE j.status IN ('todo', 'doing')
        GROUP BY 1
    ),
    ended AS (
        -- A scalar subquery per event: one primary-key probe each, never a
        -- hash join over the whole jobs table.
        SELECT (SELECT j.queue_name::text FROM procrastinate.procrastinate_jobs AS j
                WHERE j.id = e.job_id) AS queue_name,
               count(*) FILTER (WHERE e.type = 'failed'
                                  AND e.at >= now() - interval '1 hour') AS failed_last_hour,
               count(*) FILTER (WHERE e.type = 'failed') AS failed_last_day,
               count(*) FILTER (WHERE e.at >= now() - interval '5 minutes') AS finished_5m,
               count(*) FILTER (WHERE e.at >= now() - interval '1 hour') AS finished_60m
        FROM procrastinate.procrastinate_events AS e
        WHERE (e.type = 'failed' AND e.at >= now() - interval '1 day')
           OR (e.type = 'succeeded' AND e.at >= now() - interval '1 hour')
        GROUP BY 1
    ),
    queues AS (
        SELECT active.queue_name FROM active
        UNION
        SELECT ended.queue_name FROM ended
    )
    SELECT q.queue_name,
           coalesce(a.waiting, 0),
           coalesce(a.running, 0),
           coalesce(a.scheduled, 0),
           coalesce(a.retry_scheduled, 0),
           coalesce(e.failed_last_hour, 0),
           coalesce(e.failed_last_day, 0),
           CASE WHEN coalesce(a.waiting, 0) = 0 THEN 0
           ELSE greatest(0, extract(epoch FROM now() - least(
               -- never rescheduled: waiting since it was deferred (ids grow with time)
               (SELECT d.at
                FROM procrastinate.procrastinate_events AS d
                WHERE d.type = 'deferred'
                  AND d.job_id = (SELECT min(o.id)
                                  FROM procrastinate.procrastinate_jobs AS o
                                  WHERE o.queue_name = q.queue_name
                                    AND o.status = 'todo' AND o.scheduled_at IS NULL)
                LIMIT 1),
               -- scheduled or retried: waiting since it became due
               (SELECT min(s.scheduled_at)
                FROM procrastinate.procrastinate_jobs AS s
                WHERE s.queue_name = q.queue_name
                  AND s.status = 'todo' AND s.scheduled_at <= now())
           )))::double precision END,
           coalesce(e.finished_5m, 0) / 5.0,
           coalesce(e.finished_60m, 0) / 60.0
    FROM queues AS q
    LEFT JOIN active AS a ON a.queue_name = q.queue_name
    LEFT JOIN ended AS e ON e.queue_name = q.queue_name
    ORDER BY q.queue_name;
$$;

-- Per task, over attempts that ended in the last `since`: runs (attempts),
-- succeeded, failed (final failures), retries (attempts that failed and were
-- retried, including jobs rescued from a dead worker), aborted, success and
-- failure rate among finished jobs, and attempt durations (started -> ended).
CREATE FUNCTION procqueue.task_stats(since interval DEFAULT interval '1 hour')
    RETURNS TABLE (
        task_name text,
        runs bigint,
        succeeded bigint,
        failed bigint,
        retries bigint,
        aborted bigint,
        success_rate double precision,
        failure_rate double precision,
        p50_seconds double precision,
        p95_seconds double precision,
        max_seconds double precision
    )
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
    SET jit = off
AS $function$
BEGIN
    -- EXECUTE: planned for this call's window (a cached generic plan would
    -- not know how many events the window holds and could scan them all).
    RETURN QUERY EXECUTE $query$
    WITH attempts AS MATERIALIZED (
        SELECT (SELECT j.task_name::text FROM procrastinate.procrastinate_jobs AS j
                WHERE j.id = ended.job_id) AS task_name,
               ended.type,
               extract(epoch FROM ended.at - (
                   SELECT s.at
                   FROM procrastinate.procrastinate_events AS s
                   WHERE s.job_id = ended.job_id AND s.type = 'started' AND s.at <= ended.at
                   ORDER BY s.at DESC
                   LIMIT 1
               ))::double precision AS seconds
        FROM procrastinate.procrastinate_events AS ended
        WHERE ended.type IN ('succeeded', 'failed', 'deferred_for_retry', 'aborted')
          AND ended.at >= now() - $1
    ),
    counted AS (
        SELECT attempts.task_name,
               count(*) AS runs,
               count(*) FILTER (WHERE type = 'succeeded') AS succeeded,
               count(*) FILTER (WHERE type = 'failed') AS failed,
               count(*) FILTER (WHERE type = 'deferred_for_retry') AS retries,
               count(*) FILTER (WHERE type = 'aborted') AS aborted,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds) AS p50_seconds,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY seconds) AS p95_seconds,
               max(seconds) AS max_seconds
        FROM attempts
        GROUP BY attempts.task_name
    )
    SELECT c.task_name, c.runs, c.succeeded, c.failed, c.retries, c.aborted,
           c.succeeded::double precision / nullif(c.succeeded + c.failed, 0),
           c.failed::double precision / nullif(c.succeeded + c.failed, 0),
           c.p50_seconds, c.p95_seconds, c.max_seconds
    FROM counted AS c
    ORDER BY c.task_name
    $query$ USING since;
END;
$function$;

-- Every registered worker: heartbeat age, jobs in hand, healthy (heartbeat
-- younger than `stalled_after`, the workers' stalled timeout).
CREATE FUNCTION procqueue.worker_stats(stalled_after interval DEFAULT interval '30 seconds')
    RETURNS TABLE (
        worker_id bigint,
        last_heartbeat timestamptz,
        heartbeat_age_seconds double precision,
        jobs_in_hand bigint,
        healthy boolean
    )
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
    SET jit = off
AS $$
    SELECT w.id,
           w.last_heartbeat,
           greatest(0, extract(epoch FROM now() - w.last_heartbeat))::double precision,
           (SELECT count(*)
            FROM procrastinate.procrastinate_jobs AS j
            WHERE j.worker_id = w.id AND j.status = 'doing'),
           w.last_heartbeat >= now() - stalled_after
    FROM procrastinate.procrastinate_workers AS w
    ORDER BY w.id;
$$;

-- Every table of the queue (Procrastinate's and ours): size of the table, of
-- its indexes, in total (with TOAST), live and dead tuples, last vacuum.
CREATE VIEW procqueue.storage_health AS
    SELECT n.nspname::text AS schema_name,
           c.relname::text AS table_name,
           pg_relation_size(c.oid) AS table_bytes,
           pg_indexes_size(c.oid) AS index_bytes,
           pg_total_relation_size(c.oid) AS total_bytes,
           s.n_live_tup AS live_tuples,
           s.n_dead_tup AS dead_tuples,
           greatest(s.last_vacuum, s.last_autovacuum) AS last_vacuum
    FROM pg_catalog.pg_class AS c
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    LEFT JOIN pg_catalog.pg_stat_all_tables AS s ON s.relid = c.oid
    WHERE n.nspname IN ('procrastinate', 'procqueue') AND c.relkind IN ('r', 'p')
    ORDER BY pg_total_relation_size(c.oid) DESC;

CREATE VIEW procqueue.queue_health AS SELECT * FROM procqueue.queue_stats();
CREATE VIEW procqueue.task_health AS SELECT * FROM procqueue.task_stats();
CREATE VIEW procqueue.worker_health AS SELECT * FROM procqueue.worker_stats();

REVOKE ALL ON ALL TABLES IN SCHEMA procqueue FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA procqueue FROM PUBLIC;
