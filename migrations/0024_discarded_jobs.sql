-- Discarded jobs (issue 25): a failed job that can never succeed (an unknown task, a
-- row too big to send) is set aside by an operator. Its row stays `failed` in
-- Procrastinate's table, with its events and error records, for the record; this
-- table says it was discarded, by whom and when. A discarded job leaves the failed
-- list (`procqueue failed`, the dashboard's failures page, retries of "all failed")
-- and stops counting in the health verdict's failure rates (task_attempts below).
-- Deleting or pruning the job removes its row here too.
CREATE TABLE procqueue.discarded_jobs (
    job_id bigint PRIMARY KEY
        REFERENCES procrastinate.procrastinate_jobs (id) ON DELETE CASCADE,
    discarded_at timestamptz NOT NULL DEFAULT now(),
    actor text NOT NULL,
    reason text NOT NULL DEFAULT ''
);
REVOKE ALL ON procqueue.discarded_jobs FROM PUBLIC;

-- As in 0017, but the final failure of a discarded job reads `discarded`: task_stats
-- (and so the health verdict) no longer counts it as failed. Hours rolled up before
-- the discard keep counting it in long (multi-hour) windows.
CREATE OR REPLACE FUNCTION procqueue.task_attempts(from_at timestamptz, until_at timestamptz)
    RETURNS TABLE (task_name text, type text, seconds double precision, bucket integer)
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
    SET jit = off
AS $function$
BEGIN
    RETURN QUERY EXECUTE $query$
    WITH a AS MATERIALIZED (
        SELECT (SELECT j.task_name::text FROM procrastinate.procrastinate_jobs AS j
                WHERE j.id = ended.job_id) AS task_name,
               CASE WHEN ended.type = 'failed' AND EXISTS (
                        SELECT 1 FROM procqueue.discarded_jobs AS d WHERE d.job_id = ended.job_id)
                    THEN 'discarded' ELSE ended.type::text END AS type,
               extract(epoch FROM ended.at - (
                   SELECT s.at
                   FROM procrastinate.procrastinate_events AS s
                   WHERE s.job_id = ended.job_id AND s.type = 'started' AND s.at <= ended.at
                   ORDER BY s.at DESC
                   LIMIT 1
               ))::double precision AS seconds
        FROM procrastinate.procrastinate_events AS ended
        WHERE ended.type IN ('succeeded', 'failed', 'deferred_for_retry', 'aborted')
          AND ended.at >= $1 AND ended.at < $2
    )
    SELECT a.task_name, a.type, a.seconds,
           CASE WHEN a.seconds < 0.001 THEN 0
                ELSE 1 + floor(ln(a.seconds / 0.001) / ln(1.04))::integer END
    FROM a
    $query$ USING from_at, until_at;
END;
$function$;

-- As in 0006, but a discarded job's failure is not counted in failed_last_hour and
-- failed_last_day (the overview's "failed for good" columns, /metrics): they count
-- what the health verdict counts.
CREATE OR REPLACE FUNCTION procqueue.queue_stats()
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
        WHERE (e.type = 'failed' AND e.at >= now() - interval '1 day'
               AND NOT EXISTS (SELECT 1 FROM procqueue.discarded_jobs AS d
                               WHERE d.job_id = e.job_id))
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

-- The first job id queued at or after `at` (its `deferred` event), found by
-- bisection over ids (they grow with time): about 20 primary-key and event-index
-- probes, whatever the table's size. The job list's `since`/`until` filters turn
-- into id bounds with it, so they page by the primary key like every other filter.
-- Jobs of transactions that ran side by side may be a few milliseconds out of
-- order around the bound.
CREATE FUNCTION procqueue.first_job_queued_at(at timestamptz)
    RETURNS bigint
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    lo bigint;
    hi bigint;
    mid bigint;
    found_id bigint;
    queued timestamptz;
BEGIN
    SELECT min(j.id), max(j.id) + 1 FROM procrastinate.procrastinate_jobs AS j INTO lo, hi;
    IF lo IS NULL THEN
        RETURN 0;
    END IF;
    WHILE lo < hi LOOP
        mid := lo + (hi - lo) / 2;
        SELECT j.id, (SELECT min(e.at) FROM procrastinate.procrastinate_events AS e
                      WHERE e.job_id = j.id)
          FROM procrastinate.procrastinate_jobs AS j
         WHERE j.id >= mid ORDER BY j.id LIMIT 1
          INTO found_id, queued;
        IF found_id IS NULL OR found_id >= hi THEN
            hi := mid;
        ELSIF queued IS NOT NULL AND queued >= first_job_queued_at.at THEN
            hi := mid;
        ELSE
            lo := found_id + 1;
        END IF;
    END LOOP;
    RETURN lo;
END;
$$;
REVOKE ALL ON FUNCTION procqueue.first_job_queued_at(timestamptz) FROM PUBLIC;
