-- History for the dashboard's Charts page (issue 25): attempts and their
-- durations per minute and per half hour, per queue and task, per queue and in
-- all; and each queue's depth and lag once a minute. The charts read only these
-- tables (and the end events of the minutes not rolled up yet), never the jobs
-- table. All of it is kept two days (the Charts page shows the last hour or
-- day); the maintenance task that rescues stalled jobs (every
-- PROCQUEUE_RESCUE_INTERVAL seconds) samples the queues and rolls up the
-- minutes, and deletes what is older. 0017's hourly task stats (90 days, per
-- task) are unchanged.

-- Periods already rolled up, with or without attempts: minutes, and half hours
-- (UTC, from :00 and :30) summed from their minutes once the last one is in.
CREATE TABLE procqueue.chart_periods (
    width interval NOT NULL CHECK (width IN (interval '1 minute', interval '30 minutes')),
    start timestamptz NOT NULL,
    rolled_up_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (width, start)
);

-- Per rolled-up period: the attempts that ended in it by how they ended (a
-- postponed attempt has no end event: it is none of these, migration 0018), their
-- longest duration and their durations as 0017's sparse histogram (bucket 0:
-- under 1 ms; bucket b >= 1: [1 ms * 1.04^(b-1), 1 ms * 1.04^b)). Three levels,
-- so that no chart sums more rows than it has buckets: level 0 one row per queue
-- and task, level 1 one per queue (task_name ''), level 2 one in all (both ''). The
-- hour chart reads 60 minutes, the day chart 48 half hours (not 1,440 minutes).
CREATE TABLE procqueue.chart_stats (
    width interval NOT NULL,
    start timestamptz NOT NULL,
    level smallint NOT NULL CHECK (level IN (0, 1, 2)),
    queue_name text NOT NULL,
    task_name text NOT NULL,
    succeeded bigint NOT NULL,
    failed bigint NOT NULL,
    retries bigint NOT NULL,
    aborted bigint NOT NULL,
    max_seconds double precision,
    buckets integer[] NOT NULL,
    bucket_counts bigint[] NOT NULL,
    PRIMARY KEY (width, start, level, queue_name, task_name),
    FOREIGN KEY (width, start) REFERENCES procqueue.chart_periods ON DELETE CASCADE
);
CREATE INDEX chart_stats_task_idx ON procqueue.chart_stats (task_name, width, start);

-- One row per minute and queue: procqueue.queue_stats() as the first sample
-- taken in that minute saw it.
CREATE TABLE procqueue.queue_samples (
    minute timestamptz NOT NULL,
    queue_name text NOT NULL,
    sampled_at timestamptz NOT NULL DEFAULT now(),
    waiting bigint NOT NULL,
    running bigint NOT NULL,
    scheduled bigint NOT NULL,
    retry_scheduled bigint NOT NULL,
    lag_seconds double precision NOT NULL,
    PRIMARY KEY (minute, queue_name)
);
CREATE INDEX queue_samples_queue_idx ON procqueue.queue_samples (queue_name, minute);

-- 0017's procqueue.task_attempts with the job's queue and the end's time: every
-- attempt that ended in [from_at, until_at). Names are looked up per event (one
-- primary-key probe each), never by a join over the jobs table.
CREATE FUNCTION procqueue.chart_attempts(from_at timestamptz, until_at timestamptz)
    RETURNS TABLE (queue_name text, task_name text, type text, ended_at timestamptz,
                   seconds double precision, bucket integer)
    LANGUAGE plpgsql
    STABLE
    SET search_path = pg_catalog, pg_temp
    SET jit = off
AS $function$
BEGIN
    RETURN QUERY EXECUTE $query$
    WITH a AS MATERIALIZED (
        SELECT j.queue_name::text AS queue_name, j.task_name::text AS task_name,
               ended.type, ended.at,
               extract(epoch FROM ended.at - (
                   SELECT s.at
                   FROM procrastinate.procrastinate_events AS s
                   WHERE s.job_id = ended.job_id AND s.type = 'started' AND s.at <= ended.at
                   ORDER BY s.at DESC
                   LIMIT 1
               ))::double precision AS seconds
        FROM procrastinate.procrastinate_events AS ended
        LEFT JOIN LATERAL (
            -- OFFSET 0: kept a subquery (one probe per event), never flattened into a
            -- join the planner could answer by hashing the whole jobs table
            SELECT o.queue_name, o.task_name FROM procrastinate.procrastinate_jobs AS o
            WHERE o.id = ended.job_id OFFSET 0
        ) AS j ON true
        WHERE ended.type IN ('succeeded', 'failed', 'deferred_for_retry', 'aborted')
          AND ended.at >= $1 AND ended.at < $2
    )
    SELECT coalesce(a.queue_name, ''), coalesce(a.task_name, ''), a.type::text, a.at, a.seconds,
           CASE WHEN a.seconds < 0.001 THEN 0
                ELSE 1 + floor(ln(a.seconds / 0.001) / ln(1.04))::integer END
    FROM a
    $query$ USING from_at, until_at;
END;
$function$;

-- Roll up the oldest complete minutes not rolled up yet, at most `max_minutes`
-- of them, in one read of their end events, and the half hours they complete;
-- returns how many minutes. A minute is complete `grace` after its end. One
-- caller at a time (a concurrent call returns 0 at once); a period is marked
-- once, so nothing counts twice. Periods that ended more than `keep` ago are
-- deleted.
CREATE FUNCTION procqueue.roll_up_chart_minutes(
    max_minutes integer DEFAULT 720,
    grace interval DEFAULT interval '1 minute',
    keep interval DEFAULT interval '2 days'
)
    RETURNS integer
    LANGUAGE plpgsql
    VOLATILE
    SET search_path = pg_catalog, pg_temp
    SET jit = off
AS $function$
DECLARE
    oldest timestamptz;
    chosen timestamptz[];
BEGIN
    IF NOT pg_try_advisory_xact_lock(x'7071636d'::bigint) THEN  -- "pqcm"
        RETURN 0;
    END IF;
    DELETE FROM procqueue.chart_periods AS d WHERE d.start + d.width <= now() - keep;
    oldest := least(
        (SELECT min(e.at) FROM procrastinate.procrastinate_events AS e WHERE e.type = 'succeeded'),
        (SELECT min(e.at) FROM procrastinate.procrastinate_events AS e WHERE e.type = 'failed'),
        (SELECT min(e.at) FROM procrastinate.procrastinate_events AS e
         WHERE e.type = 'deferred_for_retry'),
        (SELECT min(e.at) FROM procrastinate.procrastinate_events AS e WHERE e.type = 'aborted'));
    IF oldest IS NULL THEN
        RETURN 0;
    END IF;
    SELECT array_agg(m.minute ORDER BY m.minute) INTO chosen
    FROM (
        SELECT g.minute
        FROM generate_series(date_bin('1 minute', greatest(oldest, now() - keep),
                                      timestamptz '2000-01-01'),
                             now() - grace - interval '1 minute', interval '1 minute') AS g (minute)
        WHERE NOT EXISTS (SELECT 1 FROM procqueue.chart_periods AS d
                          WHERE d.width = interval '1 minute' AND d.start = g.minute)
        ORDER BY g.minute
        LIMIT max_minutes
    ) AS m;
    IF chosen IS NULL THEN
        RETURN 0;
    END IF;
    INSERT INTO procqueue.chart_periods (width, start)
    SELECT interval '1 minute', c.minute FROM unnest(chosen) AS c (minute);
    INSERT INTO procqueue.chart_stats
        (width, start, level, queue_name, task_name, succeeded, failed, retries, aborted,
         max_seconds, buckets, bucket_counts)
    WITH attempts AS MATERIALIZED (
        SELECT date_bin('1 minute', a.ended_at, timestamptz '2000-01-01') AS start, a.*
        FROM procqueue.chart_attempts(chosen[1], chosen[cardinality(chosen)] + interval '1 minute')
             AS a
    ),
    mine AS MATERIALIZED (  -- each attempt once per level
        SELECT a.start, l.level,
               CASE WHEN l.level < 2 THEN a.queue_name ELSE '' END AS queue_name,
               CASE WHEN l.level = 0 THEN a.task_name ELSE '' END AS task_name,
               a.type, a.seconds, a.bucket
        FROM attempts AS a
        CROSS JOIN (VALUES (0::smallint), (1::smallint), (2::smallint)) AS l (level)
        WHERE a.start = ANY (chosen)
    ),
    histogram AS (
        SELECT b.start, b.level, b.queue_name, b.task_name,
               array_agg(b.bucket ORDER BY b.bucket) AS buckets,
               array_agg(b.n ORDER BY b.bucket) AS bucket_counts
        FROM (SELECT m.start, m.level, m.queue_name, m.task_name, m.bucket, count(*) AS n
              FROM mine AS m WHERE m.bucket IS NOT NULL GROUP BY 1, 2, 3, 4, 5) AS b
        GROUP BY 1, 2, 3, 4
    )
    SELECT interval '1 minute', m.start, m.level, m.queue_name, m.task_name,
           count(*) FILTER (WHERE m.type = 'succeeded'),
           count(*) FILTER (WHERE m.type = 'failed'),
           count(*) FILTER (WHERE m.type = 'deferred_for_retry'),
           count(*) FILTER (WHERE m.type = 'aborted'),
           max(m.seconds),
           coalesce(min(h.buckets), '{}'), coalesce(min(h.bucket_counts), '{}')
    FROM mine AS m
    LEFT JOIN histogram AS h
           ON h.start = m.start AND h.level = m.level AND h.queue_name = m.queue_name
          AND h.task_name = m.task_name
    GROUP BY 2, 3, 4, 5;
    -- Half hours whose last minute was rolled up now (minutes are rolled up oldest
    -- first, so the earlier ones with any attempt are in already): summed once.
    WITH ended AS (
        INSERT INTO procqueue.chart_periods (width, start)
        SELECT interval '30 minutes', date_bin('30 minutes', c.minute, timestamptz '2000-01-01')
        FROM unnest(chosen) AS c (minute)
        WHERE c.minute = date_bin('30 minutes', c.minute, timestamptz '2000-01-01')
                         + interval '29 minutes'
        ON CONFLICT DO NOTHING
        RETURNING start
    ),
    minutes AS MATERIALIZED (
        SELECT e.start AS half_hour, m.*
        FROM ended AS e
        JOIN procqueue.chart_stats AS m
          ON m.width = interval '1 minute'
         AND m.start >= e.start AND m.start < e.start + interval '30 minutes'
    ),
    histogram AS (
        SELECT b.half_hour, b.level, b.queue_name, b.task_name,
               array_agg(b.bucket ORDER BY b.bucket) AS buckets,
               array_agg(b.n ORDER BY b.bucket) AS bucket_counts
        FROM (SELECT x.half_hour, x.level, x.queue_name, x.task_name, x.bucket,
                     sum(x.n)::bigint AS n
              FROM (SELECT m.half_hour, m.level, m.queue_name, m.task_name,
                           unnest(m.buckets) AS bucket, unnest(m.bucket_counts) AS n
                    FROM minutes AS m) AS x
              GROUP BY 1, 2, 3, 4, 5) AS b
        GROUP BY 1, 2, 3, 4
    )
    INSERT INTO procqueue.chart_stats
        (width, start, level, queue_name, task_name, succeeded, failed, retries, aborted,
         max_seconds, buckets, bucket_counts)
    SELECT interval '30 minutes', m.half_hour, m.level, m.queue_name, m.task_name,
           sum(m.succeeded), sum(m.failed), sum(m.retries), sum(m.aborted), max(m.max_seconds),
           coalesce(min(h.buckets), '{}'), coalesce(min(h.bucket_counts), '{}')
    FROM minutes AS m
    LEFT JOIN histogram AS h
           ON h.half_hour = m.half_hour AND h.level = m.level AND h.queue_name = m.queue_name
          AND h.task_name = m.task_name
    GROUP BY 2, 3, 4, 5;
    RETURN cardinality(chosen);
END;
$function$;

-- Record every queue's depth and lag for the current minute (the first call in
-- a minute wins; later ones in the same minute add nothing) and delete samples
-- older than `keep`; returns the rows written.
CREATE FUNCTION procqueue.sample_queues(keep interval DEFAULT interval '2 days')
    RETURNS integer
    LANGUAGE plpgsql
    VOLATILE
    SET search_path = pg_catalog, pg_temp
    SET jit = off
AS $function$
DECLARE
    written integer;
BEGIN
    INSERT INTO procqueue.queue_samples
        (minute, queue_name, waiting, running, scheduled, retry_scheduled, lag_seconds)
    SELECT date_bin('1 minute', now(), timestamptz '2000-01-01'), s.queue_name, s.waiting,
           s.running, s.scheduled, s.retry_scheduled, s.lag_seconds
    FROM procqueue.queue_stats() AS s
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS written = ROW_COUNT;
    DELETE FROM procqueue.queue_samples AS q WHERE q.minute < now() - keep;
    RETURN written;
END;
$function$;

REVOKE ALL ON procqueue.chart_periods, procqueue.chart_stats, procqueue.queue_samples
    FROM PUBLIC;
REVOKE ALL ON FUNCTION procqueue.chart_attempts(timestamptz, timestamptz),
    procqueue.roll_up_chart_minutes(integer, interval, interval),
    procqueue.sample_queues(interval) FROM PUBLIC;
