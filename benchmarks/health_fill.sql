-- A queue history for benchmarks/health_queries.py, built with generate_series.
-- Settings read: bench.jobs (finished jobs), bench.backlog (waiting jobs).
-- Finished jobs end evenly over the last 7 days (ids grow with time); 1 in 33
-- failed for good after 4 attempts, 1 in 20 needed one retry. Every job has
-- Procrastinate's events (deferred, started, [started, deferred_for_retry],
-- succeeded|failed) and failed attempts their procqueue.job_errors rows.

CREATE TEMP TABLE bench_finished AS
SELECT g AS id,
       now() - (current_setting('bench.jobs')::int - g) * (interval '7 days' / current_setting('bench.jobs')::int) AS ended_at,
       (g % 33 = 0) AS failed,
       (g % 20 = 0) AS retried,
       (ARRAY['sync', 'images', 'notifications'])[1 + g % 3] AS queue_name,
       (ARRAY['listing:update', 'inventory:update', 'listing:create', 'inventory:create',
              'listing:delete', 'images:cleanup', 'notification:email', 'notification:push'])[1 + g % 8] AS task_name,
       0.02 + (g % 97) / 97.0 * 1.5 AS seconds
FROM generate_series(1, current_setting('bench.jobs')::int) AS g;

INSERT INTO procrastinate.procrastinate_jobs (id, queue_name, task_name, lock, args, status, attempts)
SELECT id, queue_name, task_name, 'bench:' || (id % 50000), jsonb_build_object('id', id::text),
       CASE WHEN failed THEN 'failed' ELSE 'succeeded' END::procrastinate.procrastinate_job_status,
       CASE WHEN failed THEN 4 WHEN retried THEN 2 ELSE 1 END
FROM bench_finished;

INSERT INTO procrastinate.procrastinate_events (job_id, type, at)
SELECT f.id, e.type::procrastinate.procrastinate_job_event_type, e.at
FROM bench_finished AS f
CROSS JOIN LATERAL (
    VALUES ('deferred', f.ended_at - make_interval(secs => f.seconds + 30)),
           ('started', f.ended_at - make_interval(secs => f.seconds)),
           (CASE WHEN f.failed THEN 'failed' ELSE 'succeeded' END, f.ended_at),
           (CASE WHEN f.retried OR f.failed THEN 'started' END, f.ended_at - make_interval(secs => f.seconds + 20)),
           (CASE WHEN f.retried OR f.failed THEN 'deferred_for_retry' END, f.ended_at - make_interval(secs => 18))
) AS e (type, at)
WHERE e.type IS NOT NULL;

INSERT INTO procqueue.job_errors
    (job_id, attempt, task_name, queue_name, error_type, message, traceback, transient, final, occurred_at)
SELECT f.id, a, f.task_name, f.queue_name, 'procqueue.errors.TransientError',
       'upstream answered 503', 'Traceback (most recent call last): ...', true, a = 4,
       f.ended_at - make_interval(secs => (4 - a) * 10)
FROM bench_finished AS f
CROSS JOIN generate_series(1, 4) AS a
WHERE f.failed;

SELECT setval(pg_get_serial_sequence('procrastinate.procrastinate_jobs', 'id'),
              current_setting('bench.jobs')::int);

-- The live part: a backlog of waiting jobs (through the real triggers), a few
-- scheduled for retry, and 20 running on 5 workers.
INSERT INTO procrastinate.procrastinate_jobs (queue_name, task_name, args, scheduled_at, attempts)
SELECT (ARRAY['sync', 'images', 'notifications'])[1 + g % 3], 'listing:update',
       jsonb_build_object('id', g::text),
       CASE WHEN g % 10 = 0 THEN now() + interval '1 minute' END,
       CASE WHEN g % 10 = 0 THEN 1 ELSE 0 END
FROM generate_series(1, current_setting('bench.backlog')::int) AS g;

INSERT INTO procrastinate.procrastinate_workers (last_heartbeat)
SELECT now() - make_interval(secs => g * 10) FROM generate_series(1, 5) AS g;

UPDATE procrastinate.procrastinate_jobs AS j
SET status = 'doing',
    worker_id = (SELECT min(id) FROM procrastinate.procrastinate_workers) + j.id % 5
WHERE j.id IN (SELECT id FROM procrastinate.procrastinate_jobs WHERE status = 'todo' ORDER BY id LIMIT 20);
