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
