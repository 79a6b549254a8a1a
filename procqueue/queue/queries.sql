-- Named queries of the generic queue core (jobs, failures, health, operations, maintenance, batches), in the manner of Procrastinate's
-- sql/queries.sql: a block starts with "-- name: description"; {braced} names
-- are identifiers filled in with psycopg.sql; %(named)s are parameters.

-- insert_job_error: record a failed attempt of a job
INSERT INTO procqueue.job_errors
    (job_id, attempt, task_name, queue_name, error_type, message, traceback, transient, final)
VALUES
    (%(job_id)s, %(attempt)s, %(task_name)s, %(queue_name)s, %(error_type)s, %(message)s,
     %(traceback)s, %(transient)s, %(final)s);

-- health_queues: per-queue health (migration 0006)
SELECT * FROM procqueue.queue_stats();

-- health_tasks: per-task health over a window (migration 0006)
SELECT * FROM procqueue.task_stats(%(since)s);

-- roll_up_task_stats: roll up the oldest completed hours for long task_stats windows, at most max_hours (migration 0017)
SELECT procqueue.roll_up_task_stats(%(max_hours)s) AS hours;

-- health_workers: every worker's heartbeat and jobs in hand (migration 0006)
SELECT * FROM procqueue.worker_stats(%(stalled_after)s);

-- health_storage: size and dead tuples of every queue table (migration 0006)
SELECT * FROM procqueue.storage_health;

-- failed_jobs: failed jobs, newest first, with their last recorded error
SELECT j.id, j.task_name::text AS task_name, j.queue_name::text AS queue_name, j.attempts,
       (SELECT max(e.at) FROM procrastinate.procrastinate_events AS e
        WHERE e.job_id = j.id AND e.type = 'failed') AS failed_at,
       err.error_type, err.message, err.traceback
FROM procrastinate.procrastinate_jobs AS j
LEFT JOIN LATERAL (
    SELECT x.error_type, x.message, x.traceback
    FROM procqueue.job_errors AS x
    WHERE x.job_id = j.id
    ORDER BY x.id DESC
    LIMIT 1
) AS err ON true
WHERE j.status = 'failed' AND (%(task)s::text IS NULL OR j.task_name = %(task)s)
  AND NOT EXISTS (SELECT FROM procqueue.discarded_jobs AS d WHERE d.job_id = j.id)
ORDER BY j.id DESC
LIMIT %(limit)s;

-- job_status: the status of one job (NULL row: no such job)
SELECT status::text AS status FROM procrastinate.procrastinate_jobs WHERE id = %(job_id)s;

-- retry_failed_job: put a failed job back in the queue, due now; a retry by hand is not an attempt (procrastinate_retry_job_v2 would count one)
UPDATE procrastinate.procrastinate_jobs SET status = 'todo', scheduled_at = now()
WHERE id = %(job_id)s AND status = 'failed';

-- cancel_job: cancel a waiting job, or ask the worker running it to abort
SELECT procrastinate.procrastinate_cancel_job_v1(%(job_id)s, true, false) AS id;

-- prune_finished_jobs: delete jobs of one final status that ended before the cutoff, one batch, walking the end-event index oldest first from after_at
WITH candidates AS MATERIALIZED (
    SELECT e.job_id, e.at
    FROM procrastinate.procrastinate_events AS e
    WHERE e.type = %(event_type)s::procrastinate.procrastinate_job_event_type
      AND e.at < %(cutoff)s
      AND e.at >= %(after_at)s
    ORDER BY e.at
    LIMIT %(batch_size)s
),
doomed AS (
    SELECT j.id
    FROM candidates AS c
    JOIN procrastinate.procrastinate_jobs AS j ON j.id = c.job_id
    WHERE j.status = %(status)s::procrastinate.procrastinate_job_status
      -- finished for good before the cutoff: nothing happened to it since
      AND NOT EXISTS (
          SELECT 1 FROM procrastinate.procrastinate_events AS later
          WHERE later.job_id = j.id AND later.at >= %(cutoff)s
      )
    FOR UPDATE OF j SKIP LOCKED
),
deleted AS (
    DELETE FROM procrastinate.procrastinate_jobs AS j
    USING doomed
    WHERE j.id = doomed.id
    RETURNING j.id
),
errors AS (
    DELETE FROM procqueue.job_errors AS x
    WHERE x.job_id = ANY (ARRAY(SELECT deleted.id FROM deleted))
)
SELECT (SELECT count(*) FROM deleted) AS deleted,
       (SELECT count(*) FROM candidates) AS scanned,
       (SELECT max(c.at) FROM candidates AS c) AS last_at;

-- prune_finished_attempts: delete one batch of the log's succeeded attempts (migration 0026) that ended before the cutoff, oldest first
DELETE FROM procqueue.finished_attempts
WHERE job_id IN (
    SELECT f.job_id FROM procqueue.finished_attempts AS f
    WHERE f.finished_at < %(cutoff)s
    ORDER BY f.finished_at
    LIMIT %(batch_size)s
);

-- prune_orphan_errors: delete one batch of old error rows whose job is gone
DELETE FROM procqueue.job_errors
WHERE id IN (
    SELECT x.id FROM procqueue.job_errors AS x
    WHERE x.occurred_at < %(cutoff)s
      AND NOT EXISTS (SELECT 1 FROM procrastinate.procrastinate_jobs AS j WHERE j.id = x.job_id)
    ORDER BY x.occurred_at
    LIMIT %(batch_size)s
);

-- lock_failed_jobs: lock failed jobs for a retry: all, some ids, or one task and last error type (empty type: no error recorded); discarded jobs are never retried (migration 0024)
SELECT j.id
FROM procrastinate.procrastinate_jobs AS j
WHERE j.status = 'failed'
  AND NOT EXISTS (SELECT FROM procqueue.discarded_jobs AS d WHERE d.job_id = j.id)
  AND (%(job_ids)s::bigint[] IS NULL OR j.id = ANY(%(job_ids)s))
  AND (%(task)s::text IS NULL OR j.task_name = %(task)s)
  AND (%(error_type)s::text IS NULL OR %(error_type)s = coalesce((
        SELECT x.error_type FROM procqueue.job_errors AS x
        WHERE x.job_id = j.id ORDER BY x.id DESC LIMIT 1), ''))
  AND (%(job_id)s::bigint IS NULL OR j.id = %(job_id)s)
ORDER BY j.id
FOR UPDATE OF j;

-- cancel_waiting_job: cancel a job that is waiting (todo); NULL when it is not
SELECT procrastinate.procrastinate_cancel_job_v1(%(job_id)s, false, false) AS id;

-- record_action: write one audit row (who, what, when)
INSERT INTO procqueue.dashboard_actions (actor, remote_addr, action, target, job_ids, outcome)
VALUES (%(actor)s, %(remote_addr)s, %(action)s, %(target)s, %(job_ids)s, %(outcome)s)
RETURNING id;

-- enqueue_job: a job from Python (procqueue/queue/jobs.py), through procqueue.add_job like the triggers
SELECT procqueue.add_job(%(task_name)s, %(args)s, %(queue_name)s, %(job_lock)s, %(queueing_lock)s,
                         coalesce(%(run_at)s, now() + make_interval(secs => %(delay)s)));

-- circuit_opened: a worker saw a sink go down (procqueue/queue/circuit.py)
INSERT INTO procqueue.sink_circuits (sink, is_open, opened_at, reason, updated_at)
VALUES (%(sink)s, true, %(opened_at)s, %(reason)s, now())
ON CONFLICT (sink) DO UPDATE
SET is_open = true, opened_at = EXCLUDED.opened_at, reason = EXCLUDED.reason, updated_at = now();

-- circuit_closed: a worker saw the sink answer again
UPDATE procqueue.sink_circuits SET is_open = false, updated_at = now() WHERE sink = %(sink)s;

-- open_circuits: the sinks whose circuit is open, for health
SELECT sink, opened_at, reason, updated_at FROM procqueue.sink_circuits
WHERE is_open ORDER BY sink;

-- walk_jobs_in_fetch_order: for the rest of this transaction, plan the claim below as Procrastinate's index of waiting jobs (priority, id) walked in order, stopping at the limit. The planner cannot estimate the claim's args tests, nor a burst of waiting jobs that ANALYZE has not seen yet: it took every waiting job, ran the lock test for each and sorted them (130-160 ms a claim of 99 at 20,000 waiting; 130 s with the statistics of an empty table) instead of 11 ms (benchmarks/RESULTS.md, "The claim read the whole backlog")
SELECT set_config('enable_sort', 'off', true), set_config('enable_bitmapscan', 'off', true);

-- claim_jobs_like: take up to %(limit)s more ready jobs of these tasks in one queue (none while it is paused: procqueue.paused_queues, migration 0022) for this worker, whose args are one string %(key_arg)s (procqueue/queue/batch.py); the rules of Procrastinate's procrastinate_fetch_job_v2: a job whose lock has a running job, or a waiting one of higher priority or queued first, is not taken; highest priority, then oldest first; jobs another worker is taking are skipped
WITH candidate AS (
    SELECT jobs.id
    FROM procrastinate.procrastinate_jobs AS jobs
    WHERE jobs.status = 'todo'
      AND jobs.queue_name = %(queue)s
      AND NOT EXISTS (SELECT FROM procqueue.paused_queues AS p WHERE p.queue_name = %(queue)s)
      AND jobs.task_name = ANY(%(task_names)s::text[])
      AND (jobs.scheduled_at IS NULL OR jobs.scheduled_at <= now())
      AND jsonb_typeof(jobs.args -> %(key_arg)s::text) = 'string'
      AND jobs.args - %(key_arg)s::text = '{}'::jsonb
      AND NOT EXISTS (
          SELECT 1 FROM procrastinate.procrastinate_jobs AS other_jobs
          WHERE jobs.lock IS NOT NULL
            AND other_jobs.lock = jobs.lock
            AND (other_jobs.status = 'doing'
                 OR (other_jobs.status = 'todo'
                     AND (other_jobs.priority > jobs.priority
                          OR (other_jobs.priority = jobs.priority AND other_jobs.id < jobs.id))))
      )
    ORDER BY jobs.priority DESC, jobs.id ASC
    LIMIT %(limit)s
    FOR UPDATE OF jobs SKIP LOCKED
)
UPDATE procrastinate.procrastinate_jobs AS jobs
SET status = 'doing', worker_id = %(worker_id)s
FROM candidate
WHERE jobs.id = candidate.id
RETURNING jobs.id, jobs.status, jobs.task_name, jobs.priority, jobs.lock, jobs.queueing_lock,
          jobs.args, jobs.scheduled_at, jobs.queue_name, jobs.attempts, jobs.worker_id;

-- finish_jobs: Procrastinate's finish of many jobs in one statement (procqueue/queue/finishing.py); if one of them is not running it raises and finishes none
SELECT procrastinate.procrastinate_finish_job_v1(
           j.id, j.status::procrastinate.procrastinate_job_status, j.delete_job)
FROM unnest(%(ids)s::bigint[], %(statuses)s::text[], %(deletes)s::boolean[])
     AS j (id, status, delete_job);

-- overran_jobs: running jobs that started more than %(seconds)s seconds ago, longer than any live worker holds one (its timeout plus a margin): a claim whose answer was lost, a worker stopped while the database was down; the stalled-job rescue takes them back whoever holds them
SELECT job.id, job.status, job.task_name, job.priority, job.lock, job.queueing_lock,
       job.args, job.scheduled_at, job.queue_name, job.attempts, job.worker_id
FROM procrastinate.procrastinate_jobs AS job
WHERE job.status = 'doing'
  AND (SELECT max(e.at) FROM procrastinate.procrastinate_events AS e
       WHERE e.job_id = job.id AND e.type = 'started')
      < now() - make_interval(secs => %(seconds)s);

-- health_unknown_tasks: jobs left waiting because the workers that took them do not have their task (a newer version's task during a rolling upgrade, or a typo), per task: how many, waiting since when (procqueue/engine/worker.py)
SELECT j.task_name::text AS task_name, count(*) AS waiting,
       min(p.first_postponed_at) AS waiting_since
FROM procqueue.job_postponements AS p
JOIN procrastinate.procrastinate_jobs AS j ON j.id = p.job_id
WHERE j.status = 'todo' AND p.attempts = j.attempts AND starts_with(p.reason, %(reason)s)
GROUP BY j.task_name
ORDER BY waiting_since;

-- health_changes: row changes waiting for their entity's drain job (procqueue.sync_changes, docs/bulk.md "The write path"), per entity: how many, how many a drain holds, the oldest change's time, the queue of its drain job (its lock is its task name); a backlog of changes is one waiting job, so the queue's own counts do not show it
SELECT c.entity, count(*) AS waiting, count(c.claimed_by) AS claimed,
       min(c.changed_at) AS oldest_at,
       (SELECT min(j.queue_name::text) FROM procrastinate.procrastinate_jobs AS j
        WHERE j.lock = c.entity || ':drain' AND j.status IN ('todo', 'doing')) AS drain_queue
FROM procqueue.sync_changes AS c
GROUP BY c.entity
ORDER BY c.entity;

-- discard_failed_jobs: set failed jobs aside for the record (migration 0024); returns the ids discarded now
INSERT INTO procqueue.discarded_jobs (job_id, actor, reason)
SELECT j.id, %(actor)s, %(reason)s
FROM procrastinate.procrastinate_jobs AS j
WHERE j.id = ANY(%(job_ids)s) AND j.status = 'failed'
ORDER BY j.id
FOR UPDATE OF j
ON CONFLICT (job_id) DO NOTHING
RETURNING job_id;

-- unlink_periodic_defers: Procrastinate's record of a periodic job's defer points at the job without ON DELETE: forget the job there before deleting it
UPDATE procrastinate.procrastinate_periodic_defers SET job_id = NULL WHERE job_id = ANY(%(job_ids)s);

-- delete_jobs: delete jobs that are not running, with their events, postponement and discard (cascade) and their error records; returns the ids deleted
WITH deleted AS (
    DELETE FROM procrastinate.procrastinate_jobs AS j
    WHERE j.id = ANY(%(job_ids)s) AND j.status <> 'doing'
    RETURNING j.id
),
errors AS (
    DELETE FROM procqueue.job_errors AS x WHERE x.job_id IN (SELECT deleted.id FROM deleted)
),
item_errors AS (
    DELETE FROM procqueue.sync_item_errors AS x WHERE x.job_id IN (SELECT deleted.id FROM deleted)
)
SELECT deleted.id FROM deleted ORDER BY deleted.id;

-- job_statuses: the status of some jobs, and whether each was discarded
SELECT j.id, j.status::text AS status,
       EXISTS (SELECT FROM procqueue.discarded_jobs AS d WHERE d.job_id = j.id) AS discarded
FROM procrastinate.procrastinate_jobs AS j
WHERE j.id = ANY(%(job_ids)s);

-- pause_queue: pause a queue (migration 0022); no row when it is paused already
INSERT INTO procqueue.paused_queues (queue_name, paused_by, reason)
VALUES (%(queue)s, %(actor)s, %(reason)s)
ON CONFLICT (queue_name) DO NOTHING
RETURNING paused_at;

-- resume_queue: resume a paused queue; no row when it was not paused
DELETE FROM procqueue.paused_queues WHERE queue_name = %(queue)s
RETURNING paused_at, paused_by;

-- notify_channels: wake the workers listening on these channels (sent at commit), as a deferred job does
SELECT pg_notify(channel, %(payload)s) FROM unnest(%(channels)s::text[]) AS channel;

-- paused_queue: one paused queue: since when, by whom, why (no row: not paused)
SELECT p.queue_name, p.paused_at, p.paused_by, p.reason
FROM procqueue.paused_queues AS p WHERE p.queue_name = %(queue)s;

-- health_paused: every paused queue: since when, by whom, why (migration 0022)
SELECT p.queue_name, p.paused_at, p.paused_by, p.reason
FROM procqueue.paused_queues AS p ORDER BY p.queue_name;

-- queue_in_use: whether jobs hold this queue's name, a worker serves it by name, or it is paused
SELECT EXISTS (SELECT FROM procrastinate.procrastinate_jobs AS j WHERE j.queue_name = %(queue)s)
    OR EXISTS (SELECT FROM procqueue.worker_details AS d WHERE %(queue)s = ANY (d.queues))
    OR EXISTS (SELECT FROM procqueue.paused_queues AS p WHERE p.queue_name = %(queue)s);

-- queue_overview: every queue (the given names, the jobs' queues by a skip scan of their index, the queues live workers serve by name, the paused ones): paused or not, jobs waiting (due now), scheduled (due later), running and failed, and the live workers that take its jobs (those serving every queue too) with their concurrency summed
WITH RECURSIVE job_queues AS (
    (SELECT j.queue_name::text AS name FROM procrastinate.procrastinate_jobs AS j
     ORDER BY j.queue_name LIMIT 1)
    UNION ALL
    SELECT (SELECT j.queue_name::text FROM procrastinate.procrastinate_jobs AS j
            WHERE j.queue_name > job_queues.name ORDER BY j.queue_name LIMIT 1)
    FROM job_queues WHERE job_queues.name IS NOT NULL
),
live AS (
    SELECT d.queues, d.concurrency
    FROM procqueue.worker_details AS d
    JOIN procrastinate.procrastinate_workers AS w ON w.id = d.worker_id
    WHERE w.last_heartbeat >= now() - %(stalled_after)s::interval
),
names AS (
    SELECT unnest(%(named)s::text[]) AS name
    UNION SELECT name FROM job_queues WHERE name IS NOT NULL
    UNION SELECT unnest(live.queues) FROM live
    UNION SELECT p.queue_name FROM procqueue.paused_queues AS p
),
counts AS (
    SELECT j.queue_name::text AS name,
           count(*) FILTER (WHERE j.status = 'todo'
                              AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())) AS waiting,
           count(*) FILTER (WHERE j.status = 'todo' AND j.scheduled_at > now()) AS scheduled,
           count(*) FILTER (WHERE j.status = 'doing') AS running,
           count(*) FILTER (WHERE j.status = 'failed' AND NOT EXISTS (
               SELECT FROM procqueue.discarded_jobs AS d WHERE d.job_id = j.id)) AS failed
    FROM procrastinate.procrastinate_jobs AS j
    WHERE j.status IN ('todo', 'doing', 'failed')
    GROUP BY 1
)
SELECT n.name AS queue_name,
       p.queue_name IS NOT NULL AS paused, p.paused_at, p.paused_by, p.reason,
       coalesce(c.waiting, 0) AS waiting, coalesce(c.scheduled, 0) AS scheduled,
       coalesce(c.running, 0) AS running, coalesce(c.failed, 0) AS failed,
       (SELECT count(*) FROM live WHERE live.queues IS NULL OR n.name = ANY (live.queues)) AS workers,
       (SELECT coalesce(sum(live.concurrency), 0) FROM live
        WHERE live.queues IS NULL OR n.name = ANY (live.queues)) AS slots
FROM names AS n
LEFT JOIN procqueue.paused_queues AS p ON p.queue_name = n.name
LEFT JOIN counts AS c ON c.name = n.name
ORDER BY n.name;

-- worker_list: every registered worker: its heartbeat, jobs in hand, and what it said of itself when it registered (procqueue.worker_details, migration 0022; NULL for a worker that did not: plain Procrastinate's, or one that has not yet)
SELECT w.id AS worker_id, w.last_heartbeat,
       greatest(0, extract(epoch FROM now() - w.last_heartbeat))::double precision
           AS heartbeat_age_seconds,
       w.last_heartbeat >= now() - %(stalled_after)s::interval AS healthy,
       (SELECT count(*) FROM procrastinate.procrastinate_jobs AS j
        WHERE j.worker_id = w.id AND j.status = 'doing') AS jobs_in_hand,
       d.host, d.pid, d.name, d.queues, d.concurrency, d.listens, d.version, d.started_at,
       d.jobs_done
FROM procrastinate.procrastinate_workers AS w
LEFT JOIN procqueue.worker_details AS d ON d.worker_id = w.id
ORDER BY w.id;

-- job_worker: the worker that holds or ran a job, while that worker is registered (Procrastinate clears a job's worker_id when its worker's row goes)
SELECT d.worker_id, d.host, d.pid, d.name
FROM procrastinate.procrastinate_jobs AS j
JOIN procqueue.worker_details AS d ON d.worker_id = j.worker_id
WHERE j.id = %(job_id)s;

-- sample_queues: record every queue's depth and lag for the current minute, once a minute (migration 0023)
SELECT procqueue.sample_queues() AS written;

-- roll_up_chart_minutes: roll up the oldest complete minutes per queue and task for the Charts page, at most max_minutes (migration 0023)
SELECT procqueue.roll_up_chart_minutes(%(max_minutes)s) AS minutes;
