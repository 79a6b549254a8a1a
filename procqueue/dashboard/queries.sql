-- Named queries of the dashboard (jobs, failures, audit, sessions), in the manner of Procrastinate's
-- sql/queries.sql: a block starts with "-- name: description"; {braced} names
-- are identifiers filled in with psycopg.sql; %(named)s are parameters.

-- dashboard_jobs: one page of jobs ({source}: dashboard_page_jobs or dashboard_search_jobs; {order}: ASC or DESC), each with its times from its events (queued, last started, ended) and the duration of its last attempt; a waiting job postponed since its last attempt carries the reason (migration 0018), a discarded one when (migration 0024). The page's jobs are picked first (the filters alone, LIMIT inside), then only they are joined: a filter's plan never drags the joins along
SELECT j.id, j.queue_name::text AS queue_name, j.task_name::text AS task_name,
       j.status::text AS status, j.attempts, j.lock, j.args, j.scheduled_at,
       ev.queued_at, ev.started_at, ev.ended_at, ev.updated_at,
       CASE WHEN j.status = 'doing' THEN now() - ev.started_at
            WHEN ev.ended_at >= ev.started_at THEN ev.ended_at - ev.started_at END AS duration,
       p.reason AS postponed_reason, d.discarded_at
FROM ({source}) AS j
CROSS JOIN LATERAL (
    SELECT min(e.at) FILTER (WHERE e.type = 'deferred') AS queued_at,
           max(e.at) FILTER (WHERE e.type = 'started') AS started_at,
           max(e.at) FILTER (WHERE e.type IN ('succeeded', 'failed', 'cancelled', 'aborted'))
               AS ended_at,
           max(e.at) AS updated_at
    FROM procrastinate.procrastinate_events AS e
    WHERE e.job_id = j.id
) AS ev
LEFT JOIN procqueue.job_postponements AS p
       ON p.job_id = j.id AND j.status = 'todo' AND p.attempts = j.attempts
LEFT JOIN procqueue.discarded_jobs AS d ON d.job_id = j.id
ORDER BY j.id {order};

-- dashboard_page_jobs: (a part of dashboard_jobs) the jobs of one page by keyset ({filters}: fixed one-line conditions)
SELECT j.* FROM procrastinate.procrastinate_jobs AS j
WHERE {filters}
ORDER BY j.id {order}
LIMIT %(limit)s

-- dashboard_search_jobs: (a part of dashboard_jobs) the jobs of one page of a search: among the next %(window)s jobs of the other filters, those whose args or a recorded error ("type: message") hold the text; read in page order, it stops at the page's last job
SELECT w.* FROM (SELECT j.* FROM procrastinate.procrastinate_jobs AS j
                 WHERE {filters}
                 ORDER BY j.id {order}
                 LIMIT %(window)s) AS w
WHERE w.args::text ILIKE %(pattern)s
   -- a probe of this job's errors (LIMIT 1: never planned as a hash of every error row)
   OR (SELECT true FROM procqueue.job_errors AS x
       WHERE x.job_id = w.id AND x.error_type || ': ' || x.message ILIKE %(pattern)s
       LIMIT 1)
ORDER BY w.id {order}
LIMIT %(limit)s

-- dashboard_search_window_end: the last job a search's page looked through, when the window was full (no row: it was not)
SELECT j.id FROM procrastinate.procrastinate_jobs AS j
WHERE {filters}
ORDER BY j.id {order}
OFFSET %(window)s - 1
LIMIT 1;

-- dashboard_matching_ids: the ids of the jobs the filters match ({source}: dashboard_page_jobs or dashboard_search_jobs, newest first), for an action on everything matching
SELECT j.id FROM ({source}) AS j ORDER BY j.id DESC;

-- dashboard_first_job_queued_at: the first job id queued at or after a time (migration 0024), a bound of the time filters
SELECT procqueue.first_job_queued_at(%(at)s) AS id;

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

-- dashboard_finished_attempt: a job that succeeded on its first attempt and left the jobs table at once (drain and maintenance jobs, migration 0026), from the log of those attempts
SELECT f.job_id, f.queue_name, f.task_name, f.finished_at, f.seconds
FROM procqueue.finished_attempts AS f
WHERE f.job_id = %(job_id)s;

-- dashboard_job: one job with every column the job page shows, its postponement (migration 0018) and discard (migration 0024)
SELECT j.id, j.queue_name::text AS queue_name, j.task_name::text AS task_name,
       j.status::text AS status, j.attempts, j.priority, j.lock, j.queueing_lock,
       j.args, j.scheduled_at, j.worker_id, j.abort_requested,
       p.reason AS postponed_reason, p.times AS postponed_times,
       p.first_postponed_at,
       d.discarded_at, d.actor AS discarded_by, d.reason AS discarded_reason
FROM procrastinate.procrastinate_jobs AS j
LEFT JOIN procqueue.job_postponements AS p
       ON p.job_id = j.id AND j.status = 'todo' AND p.attempts = j.attempts
LEFT JOIN procqueue.discarded_jobs AS d ON d.job_id = j.id
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

-- dashboard_failed_per_queue: failed jobs per queue (the failed-jobs index), discarded ones left out
SELECT j.queue_name::text AS queue_name, count(*) AS failed
FROM procrastinate.procrastinate_jobs AS j
WHERE j.status = 'failed'
  AND NOT EXISTS (SELECT FROM procqueue.discarded_jobs AS d WHERE d.job_id = j.id)
GROUP BY 1;

-- dashboard_failure_groups: failed jobs (not discarded) grouped by task and the type of their last error; every failed job counts (exact), read from two indexes alone (migration 0025): the failed jobs' (id, task) and the error rows' (job, id, type, time), whose last row per job is taken in one ordered pass and joined; messages are read only for each group's newest job
WITH last_error AS (
    SELECT DISTINCT ON (x.job_id) x.job_id, x.error_type, x.occurred_at
    FROM procqueue.job_errors AS x
    ORDER BY x.job_id DESC, x.id DESC
),
failed AS (
    SELECT j.id, j.task_name::text AS task_name, last.error_type,
           -- when no error was recorded, the time of the failed event (looked up only then)
           coalesce(last.occurred_at, (SELECT max(e.at) FROM procrastinate.procrastinate_events AS e
                                       WHERE e.job_id = j.id AND e.type = 'failed')) AS seen
    FROM procrastinate.procrastinate_jobs AS j
    LEFT JOIN last_error AS last ON last.job_id = j.id
    WHERE j.status = 'failed'
      AND NOT EXISTS (SELECT FROM procqueue.discarded_jobs AS d WHERE d.job_id = j.id)
),
groups AS (
    SELECT f.task_name, coalesce(f.error_type, '') AS error_type, count(*) AS jobs,
           min(f.seen) AS first_seen, max(f.seen) AS last_seen, max(f.id) AS last_job_id
    FROM failed AS f
    GROUP BY 1, 2
)
SELECT g.task_name, g.error_type, g.jobs, g.first_seen, g.last_seen,
       (SELECT x.message FROM procqueue.job_errors AS x
        WHERE x.job_id = g.last_job_id ORDER BY x.id DESC LIMIT 1) AS last_message,
       g.last_job_id
FROM groups AS g
ORDER BY g.last_seen DESC NULLS LAST, 1, 2;

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
