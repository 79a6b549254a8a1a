-- Hourly rollups for long task_stats windows (issue 14): a day-long
-- `procqueue.task_stats('1 day')` read every attempt of the day (~143,000 at
-- 1,000,000 retained jobs, about a second). Completed hours are now summed
-- once into procqueue.task_stats_hourly by the maintenance task (and by
-- procqueue.roll_up_task_stats() by hand); task_stats adds up the rolled-up
-- hours of its window and reads only the rest of the window live. Windows
-- that hold no rolled-up hour (every window up to an hour: the probes, the
-- dashboard, /metrics) are computed live and exactly, as before.

-- Hours (UTC, start of the hour) already rolled up, with or without attempts.
CREATE TABLE procqueue.task_stats_hours (
    hour timestamptz PRIMARY KEY,
    rolled_up_at timestamptz NOT NULL DEFAULT now()
);

-- One row per rolled-up hour and task. Attempt durations are a sparse
-- histogram: `buckets` (ascending) and `bucket_counts` side by side; bucket 0
-- holds durations under 1 ms, bucket b >= 1 those in [1 ms * 1.04^(b-1),
-- 1 ms * 1.04^b), so a bucket's geometric middle is within 2 % of any
-- duration in it (procqueue.task_attempts computes the bucket).
CREATE TABLE procqueue.task_stats_hourly (
    hour timestamptz NOT NULL REFERENCES procqueue.task_stats_hours ON DELETE CASCADE,
    task_name text NOT NULL,
    runs bigint NOT NULL,
    succeeded bigint NOT NULL,
    failed bigint NOT NULL,
    retries bigint NOT NULL,
    aborted bigint NOT NULL,
    max_seconds double precision,
    buckets integer[] NOT NULL,
    bucket_counts bigint[] NOT NULL,
    PRIMARY KEY (hour, task_name)
);

-- Every attempt that ended in [from_at, until_at): its task, end event type,
-- duration (its latest `started` event -> its end) and duration bucket.
-- EXECUTE: planned for this call's range (a generic plan would not know how
-- many events it holds and could scan them all). Task names are looked up per
-- event (one primary-key probe each), never by a join over the jobs table.
CREATE FUNCTION procqueue.task_attempts(from_at timestamptz, until_at timestamptz)
    RETURNS TABLE (task_name text, type text, seconds double precision, bucket integer)
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
    SET jit = off
AS $function$
BEGIN
    -- MATERIALIZED: each attempt's duration subquery runs once, not once per use.
    RETURN QUERY EXECUTE $query$
    WITH a AS MATERIALIZED (
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
          AND ended.at >= $1 AND ended.at < $2
    )
    SELECT a.task_name, a.type::text, a.seconds,
           CASE WHEN a.seconds < 0.001 THEN 0
                ELSE 1 + floor(ln(a.seconds / 0.001) / ln(1.04))::integer END
    FROM a
    $query$ USING from_at, until_at;
END;
$function$;

-- Roll up the oldest completed hours not rolled up yet, at most `max_hours`
-- of them; returns how many. An hour is complete `grace` after its end (an
-- event's time is its transaction's start). One caller at a time (a second,
-- concurrent call returns 0 at once), and an hour's row is inserted once
-- (ON CONFLICT DO NOTHING): running it again or twice at once never counts
-- twice. Hours that ended more than `keep` ago are deleted. An event written
-- into an hour after that hour was rolled up (a transaction open longer than
-- `grace`) is not counted by long windows.
CREATE FUNCTION procqueue.roll_up_task_stats(
    max_hours integer DEFAULT 24,
    grace interval DEFAULT interval '1 minute',
    keep interval DEFAULT interval '90 days'
)
    RETURNS integer
    LANGUAGE plpgsql
    VOLATILE
    SET search_path = pg_catalog, pg_temp
    SET jit = off
AS $function$
DECLARE
    oldest timestamptz;
    next_hour timestamptz;
    done integer := 0;
BEGIN
    IF NOT pg_try_advisory_xact_lock(x'70717374'::bigint) THEN  -- "pqst"
        RETURN 0;
    END IF;
    DELETE FROM procqueue.task_stats_hours AS d WHERE d.hour + interval '1 hour' <= now() - keep;
    oldest := least(
        (SELECT min(e.at) FROM procrastinate.procrastinate_events AS e WHERE e.type = 'succeeded'),
        (SELECT min(e.at) FROM procrastinate.procrastinate_events AS e WHERE e.type = 'failed'),
        (SELECT min(e.at) FROM procrastinate.procrastinate_events AS e
         WHERE e.type = 'deferred_for_retry'),
        (SELECT min(e.at) FROM procrastinate.procrastinate_events AS e WHERE e.type = 'aborted'));
    IF oldest IS NULL THEN
        RETURN 0;
    END IF;
    FOR next_hour IN
        SELECT h.hour
        FROM generate_series(date_trunc('hour', greatest(oldest, now() - keep), 'UTC'),
                             now() - grace - interval '1 hour', interval '1 hour') AS h (hour)
        WHERE NOT EXISTS (SELECT 1 FROM procqueue.task_stats_hours AS d WHERE d.hour = h.hour)
        ORDER BY h.hour
        LIMIT max_hours
    LOOP
        INSERT INTO procqueue.task_stats_hours (hour) VALUES (next_hour) ON CONFLICT DO NOTHING;
        CONTINUE WHEN NOT FOUND;
        INSERT INTO procqueue.task_stats_hourly
            (hour, task_name, runs, succeeded, failed, retries, aborted, max_seconds,
             buckets, bucket_counts)
        WITH attempts AS MATERIALIZED (
            SELECT * FROM procqueue.task_attempts(next_hour, next_hour + interval '1 hour')
        ),
        histogram AS (
            SELECT b.task_name, array_agg(b.bucket ORDER BY b.bucket) AS buckets,
                   array_agg(b.n ORDER BY b.bucket) AS bucket_counts
            FROM (SELECT a.task_name, a.bucket, count(*) AS n
                  FROM attempts AS a WHERE a.bucket IS NOT NULL GROUP BY 1, 2) AS b
            GROUP BY b.task_name
        )
        SELECT next_hour, a.task_name, count(*),
               count(*) FILTER (WHERE a.type = 'succeeded'),
               count(*) FILTER (WHERE a.type = 'failed'),
               count(*) FILTER (WHERE a.type = 'deferred_for_retry'),
               count(*) FILTER (WHERE a.type = 'aborted'),
               max(a.seconds),
               coalesce(min(h.buckets), '{}'), coalesce(min(h.bucket_counts), '{}')
        FROM attempts AS a
        LEFT JOIN histogram AS h ON h.task_name = a.task_name
        GROUP BY a.task_name;
        done := done + 1;
    END LOOP;
    RETURN done;
END;
$function$;

-- Same signature and columns as in 0006. Live and exact when the window holds
-- no rolled-up hour; else the rolled-up hours plus the rest of the window
-- read live: counts and max exact, p50/p95 from the merged histograms
-- (percentile_cont's interpolation between the two nearest ranks, each rank
-- read as its bucket's geometric middle, capped at the max): within 2 % of
-- the exact value (0.5 ms under 1 ms).
CREATE OR REPLACE FUNCTION procqueue.task_stats(since interval DEFAULT interval '1 hour')
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
DECLARE
    window_start timestamptz := now() - since;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM procqueue.task_stats_hours AS d
                   WHERE d.hour >= window_start AND d.hour + interval '1 hour' <= now()) THEN
        RETURN QUERY
        WITH counted AS (
            SELECT a.task_name,
                   count(*) AS runs,
                   count(*) FILTER (WHERE a.type = 'succeeded') AS succeeded,
                   count(*) FILTER (WHERE a.type = 'failed') AS failed,
                   count(*) FILTER (WHERE a.type = 'deferred_for_retry') AS retries,
                   count(*) FILTER (WHERE a.type = 'aborted') AS aborted,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY a.seconds) AS p50_seconds,
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY a.seconds) AS p95_seconds,
                   max(a.seconds) AS max_seconds
            FROM procqueue.task_attempts(window_start, 'infinity') AS a
            GROUP BY a.task_name
        )
        SELECT c.task_name, c.runs, c.succeeded, c.failed, c.retries, c.aborted,
               c.succeeded::double precision / nullif(c.succeeded + c.failed, 0),
               c.failed::double precision / nullif(c.succeeded + c.failed, 0),
               c.p50_seconds, c.p95_seconds, c.max_seconds
        FROM counted AS c
        ORDER BY c.task_name;
        RETURN;
    END IF;

    RETURN QUERY
    WITH rolled AS MATERIALIZED (
        SELECT d.hour FROM procqueue.task_stats_hours AS d
        WHERE d.hour >= window_start AND d.hour + interval '1 hour' <= now()
    ),
    -- the rest of the window: before, between and after the rolled-up hours
    gaps AS (
        SELECT coalesce(lag(r.hour) OVER (ORDER BY r.hour) + interval '1 hour', window_start)
                   AS from_at,
               r.hour AS until_at
        FROM rolled AS r
        UNION ALL
        SELECT coalesce(max(r.hour) + interval '1 hour', window_start), 'infinity'
        FROM rolled AS r
    ),
    live AS MATERIALIZED (
        SELECT a.*
        FROM gaps AS g
        CROSS JOIN LATERAL procqueue.task_attempts(g.from_at, g.until_at) AS a
        WHERE g.from_at < g.until_at
    ),
    hourly AS MATERIALIZED (
        SELECT t.* FROM procqueue.task_stats_hourly AS t JOIN rolled AS r ON r.hour = t.hour
    ),
    counted AS (
        SELECT x.task_name, sum(x.runs)::bigint AS runs, sum(x.succeeded)::bigint AS succeeded,
               sum(x.failed)::bigint AS failed, sum(x.retries)::bigint AS retries,
               sum(x.aborted)::bigint AS aborted, max(x.max_seconds) AS max_seconds
        FROM (
            SELECT h.task_name, h.runs, h.succeeded, h.failed, h.retries, h.aborted, h.max_seconds
            FROM hourly AS h
            UNION ALL
            SELECT l.task_name, count(*), count(*) FILTER (WHERE l.type = 'succeeded'),
                   count(*) FILTER (WHERE l.type = 'failed'),
                   count(*) FILTER (WHERE l.type = 'deferred_for_retry'),
                   count(*) FILTER (WHERE l.type = 'aborted'), max(l.seconds)
            FROM live AS l
            GROUP BY l.task_name
        ) AS x
        GROUP BY x.task_name
    ),
    histogram AS (
        SELECT x.task_name, x.bucket, sum(x.n) AS n
        FROM (
            -- in the select list (zipped: same lengths), far cheaper than in FROM
            SELECT h.task_name, unnest(h.buckets) AS bucket, unnest(h.bucket_counts) AS n
            FROM hourly AS h
            UNION ALL
            SELECT l.task_name, l.bucket, count(*) FROM live AS l
            WHERE l.bucket IS NOT NULL GROUP BY 1, 2
        ) AS x
        GROUP BY x.task_name, x.bucket
    ),
    cumulative AS MATERIALIZED (
        SELECT hg.task_name, hg.bucket,
               CASE WHEN hg.bucket = 0 THEN 0.0005
                    ELSE 0.001 * power(1.04::double precision, hg.bucket - 0.5) END AS seconds,
               sum(hg.n) OVER (PARTITION BY hg.task_name ORDER BY hg.bucket) AS upto,
               sum(hg.n) OVER (PARTITION BY hg.task_name) AS total
        FROM histogram AS hg
    ),
    ranked AS (
        SELECT DISTINCT c.task_name, q.p, q.p * (c.total - 1) AS pos
        FROM cumulative AS c
        CROSS JOIN (VALUES (0.5), (0.95)) AS q (p)
    ),
    quantiles AS (
        SELECT r.task_name,
               max(lo.seconds + (r.pos - floor(r.pos))::double precision * (hi.seconds - lo.seconds))
                   FILTER (WHERE r.p = 0.5) AS p50_seconds,
               max(lo.seconds + (r.pos - floor(r.pos))::double precision * (hi.seconds - lo.seconds))
                   FILTER (WHERE r.p = 0.95) AS p95_seconds
        FROM ranked AS r
        CROSS JOIN LATERAL (SELECT c.seconds FROM cumulative AS c
                            WHERE c.task_name = r.task_name AND c.upto > floor(r.pos)
                            ORDER BY c.bucket LIMIT 1) AS lo
        CROSS JOIN LATERAL (SELECT c.seconds FROM cumulative AS c
                            WHERE c.task_name = r.task_name AND c.upto > ceil(r.pos)
                            ORDER BY c.bucket LIMIT 1) AS hi
        GROUP BY r.task_name
    )
    SELECT c.task_name, c.runs, c.succeeded, c.failed, c.retries, c.aborted,
           c.succeeded::double precision / nullif(c.succeeded + c.failed, 0),
           c.failed::double precision / nullif(c.succeeded + c.failed, 0),
           least(q.p50_seconds, c.max_seconds), least(q.p95_seconds, c.max_seconds),
           c.max_seconds
    FROM counted AS c
    LEFT JOIN quantiles AS q ON q.task_name = c.task_name
    ORDER BY c.task_name;
END;
$function$;

REVOKE ALL ON procqueue.task_stats_hours, procqueue.task_stats_hourly FROM PUBLIC;
REVOKE ALL ON FUNCTION procqueue.task_attempts(timestamptz, timestamptz),
    procqueue.roll_up_task_stats(integer, interval, interval) FROM PUBLIC;
