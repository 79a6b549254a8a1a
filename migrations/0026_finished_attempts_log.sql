-- Succeeded work leaves the hot tables (issue 23, "the jobs table stays small"): a
-- drain job (one per batch of synced changes) or a maintenance job (rescue, prune,
-- reconcile) that succeeds on its first attempt is written here as one narrow row and deleted from procrastinate_jobs at once, its
-- events with it (ON DELETE CASCADE). Procrastinate's jobs and events tables then
-- hold only live work, failed work and the jobs users look up (notifications, image
-- cleanups, bulk syncs), which are pruned as before. A job with an earlier failed,
-- rescued or postponed attempt keeps its row and events until pruned, so its history
-- stays readable. Every reader of finished attempts (task_attempts and so task_stats and
-- the health verdict, chart_attempts, queue_stats, both roll-ups) reads this log
-- beside the events; the prune deletes its rows after PROCQUEUE_PRUNE_SUCCEEDED_AFTER
-- (procqueue/queue/maintenance.py).
CREATE TABLE procqueue.finished_attempts (
    job_id bigint PRIMARY KEY,
    finished_at timestamptz NOT NULL,
    -- its `started` event -> its end; NULL if it has none
    seconds double precision,
    queue_name text NOT NULL,
    task_name text NOT NULL
) WITH (autovacuum_vacuum_insert_scale_factor = 0.0,
        autovacuum_vacuum_insert_threshold = 10000);
CREATE INDEX finished_attempts_finished_at_idx ON procqueue.finished_attempts (finished_at);
REVOKE ALL ON procqueue.finished_attempts FROM PUBLIC;

-- Runs as the schema's owner (whoever finishes the job may not write this log), with
-- the same `now()` as Procrastinate's `succeeded` event of the same update. A job
-- postponed on its way (an outage, a lost fetch answer: migration 0018) keeps its row,
-- so why it waited stays readable until the prune.
CREATE FUNCTION procqueue.log_succeeded_job_and_remove_it()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $function$
BEGIN
    IF EXISTS (SELECT FROM procqueue.job_postponements AS p WHERE p.job_id = NEW.id) THEN
        RETURN NULL;
    END IF;
    INSERT INTO procqueue.finished_attempts (job_id, finished_at, seconds, queue_name, task_name)
    SELECT NEW.id, now(), extract(epoch FROM now() - max(s.at))::double precision,
           NEW.queue_name, NEW.task_name
    FROM procrastinate.procrastinate_events AS s
    WHERE s.job_id = NEW.id AND s.type = 'started'
    ON CONFLICT (job_id) DO NOTHING;
    DELETE FROM procrastinate.procrastinate_jobs AS j WHERE j.id = NEW.id;
    RETURN NULL;
END;
$function$;
REVOKE ALL ON FUNCTION procqueue.log_succeeded_job_and_remove_it() FROM PUBLIC;

-- The trigger that runs it is attached by `procqueue migrate` with the task names of
-- the job specs that leave at once (procqueue/queue/finished_attempts.py).

-- As in 0024, with the log's succeeded attempts.
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
        UNION ALL
        SELECT f.task_name, 'succeeded', f.seconds
        FROM procqueue.finished_attempts AS f
        WHERE f.finished_at >= $1 AND f.finished_at < $2
    )
    SELECT a.task_name, a.type, a.seconds,
           CASE WHEN a.seconds < 0.001 THEN 0
                ELSE 1 + floor(ln(a.seconds / 0.001) / ln(1.04))::integer END
    FROM a
    $query$ USING from_at, until_at;
END;
$function$;

-- As in 0023, with the log's succeeded attempts.
CREATE OR REPLACE FUNCTION procqueue.chart_attempts(from_at timestamptz, until_at timestamptz)
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
        UNION ALL
        SELECT f.queue_name, f.task_name, 'succeeded', f.finished_at, f.seconds
        FROM procqueue.finished_attempts AS f
        WHERE f.finished_at >= $1 AND f.finished_at < $2
    )
    SELECT coalesce(a.queue_name, ''), coalesce(a.task_name, ''), a.type::text, a.at, a.seconds,
           CASE WHEN a.seconds < 0.001 THEN 0
                ELSE 1 + floor(ln(a.seconds / 0.001) / ln(1.04))::integer END
    FROM a
    $query$ USING from_at, until_at;
END;
$function$;

-- As in 0024, with the log's succeeded attempts in the finished counts.
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
        SELECT x.queue_name,
               count(*) FILTER (WHERE x.type = 'failed'
                                  AND x.at >= now() - interval '1 hour') AS failed_last_hour,
               count(*) FILTER (WHERE x.type = 'failed') AS failed_last_day,
               count(*) FILTER (WHERE x.at >= now() - interval '5 minutes') AS finished_5m,
               count(*) FILTER (WHERE x.at >= now() - interval '1 hour') AS finished_60m
        FROM (
            -- A scalar subquery per event: one primary-key probe each, never a
            -- hash join over the whole jobs table.
            SELECT (SELECT j.queue_name::text FROM procrastinate.procrastinate_jobs AS j
                    WHERE j.id = e.job_id) AS queue_name,
                   e.type::text AS type, e.at
            FROM procrastinate.procrastinate_events AS e
            WHERE (e.type = 'failed' AND e.at >= now() - interval '1 day'
                   AND NOT EXISTS (SELECT 1 FROM procqueue.discarded_jobs AS d
                                   WHERE d.job_id = e.job_id))
               OR (e.type = 'succeeded' AND e.at >= now() - interval '1 hour')
            UNION ALL
            SELECT f.queue_name, 'succeeded', f.finished_at
            FROM procqueue.finished_attempts AS f
            WHERE f.finished_at >= now() - interval '1 hour'
        ) AS x
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

-- When the oldest finished attempt ended, in the events or in the log; NULL if none
-- did. The roll-ups below start there: one index probe per end type.
CREATE FUNCTION procqueue.oldest_attempt_end()
    RETURNS timestamptz
    LANGUAGE sql
    STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT least(
        (SELECT min(e.at) FROM procrastinate.procrastinate_events AS e WHERE e.type = 'succeeded'),
        (SELECT min(e.at) FROM procrastinate.procrastinate_events AS e WHERE e.type = 'failed'),
        (SELECT min(e.at) FROM procrastinate.procrastinate_events AS e
         WHERE e.type = 'deferred_for_retry'),
        (SELECT min(e.at) FROM procrastinate.procrastinate_events AS e WHERE e.type = 'aborted'),
        (SELECT min(f.finished_at) FROM procqueue.finished_attempts AS f));
$$;
REVOKE ALL ON FUNCTION procqueue.oldest_attempt_end() FROM PUBLIC;

-- As in 0017, starting from the oldest attempt in the events or the log.
CREATE OR REPLACE FUNCTION procqueue.roll_up_task_stats(
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
    oldest := procqueue.oldest_attempt_end();
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

-- As in 0023, starting from the oldest attempt in the events or the log.
CREATE OR REPLACE FUNCTION procqueue.roll_up_chart_minutes(
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
    oldest := procqueue.oldest_attempt_end();
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
