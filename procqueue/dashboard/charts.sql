-- Named queries of the Charts page (migration 0023), in the manner of queries.sql
-- beside this file. They read the per-minute and per-half-hour rollups, the queue
-- samples, and the end events of the minutes not rolled up yet (a minute or two
-- when the maintenance task runs), never the jobs table. %(queue)s and %(task)s:
-- '' means any.

-- chart_attempts: per chart bucket (%(step)s wide, over the last %(span)s) the attempts that ended, by how, their longest duration and their merged duration histogram
WITH since AS MATERIALIZED (
    SELECT date_bin(%(step)s::interval, now() - %(span)s::interval, timestamptz '2000-01-01') AS at
),
-- with %(half_hours)s (buckets of 30 minutes or more): the rolled-up half hours,
-- then the minutes after the last of them; else the minutes only. The rows of one
-- %(level)s: everything (2), one queue (1), or a task, in one queue or all (0).
rolled AS MATERIALIZED (
    SELECT h.start AS minute, h.succeeded, h.failed, h.retries, h.aborted, h.max_seconds,
           h.buckets, h.bucket_counts
    FROM procqueue.chart_stats AS h
    WHERE %(half_hours)s AND h.width = interval '30 minutes'
      AND h.start >= (SELECT at FROM since) AND h.level = %(level)s::smallint
      AND (%(queue)s::text = '' OR h.queue_name = %(queue)s::text)
      AND h.task_name = %(task)s::text
    UNION ALL
    SELECT m.start, m.succeeded, m.failed, m.retries, m.aborted, m.max_seconds, m.buckets,
           m.bucket_counts
    FROM procqueue.chart_stats AS m
    WHERE m.width = interval '1 minute'
      AND m.start >= greatest(
              (SELECT at FROM since),
              CASE WHEN %(half_hours)s THEN (SELECT max(p.start) + interval '30 minutes'
                                             FROM procqueue.chart_periods AS p
                                             WHERE p.width = interval '30 minutes') END)
      AND m.level = %(level)s::smallint
      AND (%(queue)s::text = '' OR m.queue_name = %(queue)s::text)
      AND m.task_name = %(task)s::text
),
live AS MATERIALIZED (
    SELECT date_bin('1 minute', a.ended_at, timestamptz '2000-01-01') AS minute, a.type,
           a.seconds, a.bucket
    FROM procqueue.chart_attempts(
             greatest((SELECT at FROM since),
                      (SELECT max(c.start) + interval '1 minute' FROM procqueue.chart_periods AS c
                       WHERE c.width = interval '1 minute')),
             'infinity') AS a
    WHERE (%(queue)s::text = '' OR a.queue_name = %(queue)s::text)
      AND (%(task)s::text = '' OR a.task_name = %(task)s::text)
),
counts AS (
    SELECT date_bin(%(step)s::interval, x.minute, timestamptz '2000-01-01') AS bucket,
           sum(x.succeeded)::bigint AS succeeded, sum(x.failed)::bigint AS failed,
           sum(x.retries)::bigint AS retries, sum(x.aborted)::bigint AS aborted,
           max(x.max_seconds) AS max_seconds
    FROM (
        SELECT r.minute, r.succeeded, r.failed, r.retries, r.aborted, r.max_seconds FROM rolled AS r
        UNION ALL
        SELECT l.minute, count(*) FILTER (WHERE l.type = 'succeeded'),
               count(*) FILTER (WHERE l.type = 'failed'),
               count(*) FILTER (WHERE l.type = 'deferred_for_retry'),
               count(*) FILTER (WHERE l.type = 'aborted'), max(l.seconds)
        FROM live AS l GROUP BY l.minute
    ) AS x
    GROUP BY 1
),
histogram AS (
    SELECT h.bucket, array_agg(h.duration_bucket ORDER BY h.duration_bucket) AS buckets,
           array_agg(h.n ORDER BY h.duration_bucket) AS bucket_counts
    FROM (
        SELECT date_bin(%(step)s::interval, x.minute, timestamptz '2000-01-01') AS bucket,
               x.duration_bucket, sum(x.n)::bigint AS n
        FROM (
            -- in the select list (zipped: same lengths), far cheaper than in FROM
            SELECT r.minute, unnest(r.buckets) AS duration_bucket, unnest(r.bucket_counts) AS n
            FROM rolled AS r
            UNION ALL
            SELECT l.minute, l.bucket, count(*) FROM live AS l
            WHERE l.bucket IS NOT NULL GROUP BY 1, 2
        ) AS x
        GROUP BY 1, 2
    ) AS h
    GROUP BY h.bucket
)
SELECT b.bucket, coalesce(c.succeeded, 0) AS succeeded, coalesce(c.retries, 0) AS retried,
       coalesce(c.failed, 0) AS failed, coalesce(c.aborted, 0) AS aborted, c.max_seconds,
       coalesce(h.buckets, '{}') AS buckets, coalesce(h.bucket_counts, '{}') AS bucket_counts
FROM generate_series((SELECT at FROM since), now(), %(step)s::interval) AS b (bucket)
LEFT JOIN counts AS c ON c.bucket = b.bucket
LEFT JOIN histogram AS h ON h.bucket = b.bucket
ORDER BY b.bucket;

-- chart_depth: per chart bucket the highest depth sampled in it (waiting, running: summed over the queues of one sample minute) and the longest lag, and how many minutes were sampled
WITH since AS MATERIALIZED (
    SELECT date_bin(%(step)s::interval, now() - %(span)s::interval, timestamptz '2000-01-01') AS at
),
minutes AS (
    SELECT s.minute, sum(s.waiting)::bigint AS waiting, sum(s.running)::bigint AS running,
           max(s.lag_seconds) AS lag_seconds
    FROM procqueue.queue_samples AS s
    WHERE s.minute >= (SELECT at FROM since)
      AND (%(queue)s::text = '' OR s.queue_name = %(queue)s::text)
    GROUP BY s.minute
),
binned AS (
    SELECT date_bin(%(step)s::interval, m.minute, timestamptz '2000-01-01') AS bucket,
           max(m.waiting) AS waiting, max(m.running) AS running,
           max(m.lag_seconds) AS lag_seconds, count(*) AS samples
    FROM minutes AS m
    GROUP BY 1
)
SELECT b.bucket, x.waiting, x.running, x.lag_seconds, coalesce(x.samples, 0) AS samples
FROM generate_series((SELECT at FROM since), now(), %(step)s::interval) AS b (bucket)
LEFT JOIN binned AS x ON x.bucket = b.bucket
ORDER BY b.bucket;

-- chart_task_names: the task names in the rollups (two days), one index probe each (skip scan)
WITH RECURSIVE names AS (
    (SELECT m.task_name AS name FROM procqueue.chart_stats AS m
     WHERE m.task_name > '' ORDER BY 1 LIMIT 1)
    UNION ALL
    SELECT (SELECT m.task_name FROM procqueue.chart_stats AS m
            WHERE m.task_name > names.name ORDER BY 1 LIMIT 1)
    FROM names WHERE names.name IS NOT NULL
)
SELECT name FROM names WHERE name IS NOT NULL;

-- chart_sampled_queues: the queue names in the queue samples, one index probe each (skip scan)
WITH RECURSIVE names AS (
    (SELECT s.queue_name AS name FROM procqueue.queue_samples AS s ORDER BY 1 LIMIT 1)
    UNION ALL
    SELECT (SELECT s.queue_name FROM procqueue.queue_samples AS s
            WHERE s.queue_name > names.name ORDER BY 1 LIMIT 1)
    FROM names WHERE names.name IS NOT NULL
)
SELECT name FROM names WHERE name IS NOT NULL;
