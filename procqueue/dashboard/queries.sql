-- Named queries of the dashboard (jobs, failures, audit, sessions), in the manner of Procrastinate's
-- sql/queries.sql: a block starts with "-- name: description"; {braced} names
-- are identifiers filled in with psycopg.sql; %(named)s are parameters.

-- dashboard_jobs: one page of jobs by keyset ({filters}: fixed one-line conditions; {order}: ASC or DESC); a waiting job postponed since its last attempt carries the reason (migration 0018)
SELECT j.id, j.queue_name::text AS queue_name, j.task_name::text AS task_name,
       j.status::text AS status, j.attempts, j.lock, j.args, j.scheduled_at,
       (SELECT max(e.at) FROM procrastinate.procrastinate_events AS e
        WHERE e.job_id = j.id) AS updated_at,
       p.reason AS postponed_reason
FROM procrastinate.procrastinate_jobs AS j
LEFT JOIN procqueue.job_postponements AS p
       ON p.job_id = j.id AND j.status = 'todo' AND p.attempts = j.attempts
WHERE {filters}
ORDER BY j.id {order}
LIMIT %(limit)s;

-- dashboard_distinct_names: distinct values of a job column (task_name or
-- queue_name), one index probe each (skip scan)
WITH RECURSIVE names AS (
    (SELECT j.{column}::text AS name FROM procrastinate.procrastinate_jobs AS j
     ORDER BY j.{column} LIMIT 1)
    UNION ALL
    SELECT (SELECT j.{column}::text FROM procrastinate.procrastinate_jobs AS j
            WHERE j.{column} > names.name ORDER BY j.{column} LIMIT 1)
    FROM names WHERE names.name IS NOT NULL
)
SELECT name FROM names WHERE name IS NOT NULL;

-- dashboard_job: one job with every column the job page shows
SELECT j.id, j.queue_name::text AS queue_name, j.task_name::text AS task_name,
       j.status::text AS status, j.attempts, j.priority, j.lock, j.queueing_lock,
       j.args, j.scheduled_at, j.worker_id, j.abort_requested,
       p.reason AS postponed_reason, p.times AS postponed_times,
       p.first_postponed_at
FROM procrastinate.procrastinate_jobs AS j
LEFT JOIN procqueue.job_postponements AS p
       ON p.job_id = j.id AND j.status = 'todo' AND p.attempts = j.attempts
WHERE j.id = %(job_id)s;

-- dashboard_job_events: the event timeline of one job, oldest first
SELECT e.type::text AS type, e.at
FROM procrastinate.procrastinate_events AS e
WHERE e.job_id = %(job_id)s
ORDER BY e.at, e.id;

-- dashboard_job_errors: every recorded failed attempt of one job, oldest first
SELECT x.attempt, x.error_type, x.message, x.traceback, x.transient, x.final, x.occurred_at
FROM procqueue.job_errors AS x
WHERE x.job_id = %(job_id)s
ORDER BY x.id;

-- dashboard_failed_per_queue: failed jobs per queue (the failed-jobs index)
SELECT j.queue_name::text AS queue_name, count(*) AS failed
FROM procrastinate.procrastinate_jobs AS j
WHERE j.status = 'failed'
GROUP BY 1;

-- dashboard_failure_groups: failed jobs grouped by task and the type of their last error
SELECT j.task_name::text AS task_name,
       coalesce(err.error_type, '') AS error_type,
       count(*) AS jobs,
       min(err.seen) AS first_seen,
       max(err.seen) AS last_seen,
       (array_agg(err.message ORDER BY j.id DESC))[1] AS last_message,
       max(j.id) AS last_job_id
FROM procrastinate.procrastinate_jobs AS j
LEFT JOIN LATERAL (
    SELECT x.error_type, x.message, x.occurred_at FROM procqueue.job_errors AS x
    WHERE x.job_id = j.id ORDER BY x.id DESC LIMIT 1
) AS last ON true
CROSS JOIN LATERAL (
    -- when no error was recorded, the time of the failed event (looked up only then)
    SELECT last.error_type, last.message,
           coalesce(last.occurred_at, (SELECT max(e.at) FROM procrastinate.procrastinate_events AS e
                                       WHERE e.job_id = j.id AND e.type = 'failed')) AS seen
) AS err
WHERE j.status = 'failed'
GROUP BY 1, 2
ORDER BY last_seen DESC NULLS LAST, 1, 2;

-- dashboard_audit: the newest audit rows, keyset-paged by id
SELECT a.id, a.at, a.actor, a.remote_addr, a.action, a.target, a.job_ids, a.outcome
FROM procqueue.dashboard_actions AS a
WHERE (%(before)s::bigint IS NULL OR a.id < %(before)s)
ORDER BY a.id DESC
LIMIT %(limit)s;

-- dashboard_session_open: a new dashboard session, known by the SHA-256 of its token (migration 0015), with its role (0021)
INSERT INTO procqueue.dashboard_sessions (token_hash, actor, user_id, email, remote_addr, role)
VALUES (%(token_hash)s, %(actor)s, %(user_id)s, %(email)s, %(remote_addr)s, %(role)s);

-- dashboard_session_find: who holds a session that is younger than the lifetime, and their role
SELECT s.actor, s.user_id, s.email, s.role
FROM procqueue.dashboard_sessions AS s
WHERE s.token_hash = %(token_hash)s AND s.created_at > now() - %(lifetime)s::interval;

-- dashboard_session_revoke: end one session (sign-out)
DELETE FROM procqueue.dashboard_sessions WHERE token_hash = %(token_hash)s;

-- dashboard_sessions_prune: forget sessions older than the lifetime
DELETE FROM procqueue.dashboard_sessions WHERE created_at <= now() - %(lifetime)s::interval;

-- dashboard_waiting_changes: an entity's changes waiting for its drain job (procqueue.sync_changes, docs/bulk.md "The write path"), by the key in the entity filter
SELECT c.entity, c.entity_id, c.changed_at, c.changes, c.claimed_by
FROM procqueue.sync_changes AS c WHERE c.entity_id = %(key)s ORDER BY c.entity;
