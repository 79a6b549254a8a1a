-- Named queries of the engine (start checks, heartbeats, saving outcomes, migration bookkeeping), in the manner of Procrastinate's
-- sql/queries.sql: a block starts with "-- name: description"; {braced} names
-- are identifiers filled in with psycopg.sql; %(named)s are parameters.

-- missing_table: whether a configured table exists
SELECT to_regclass(%(table)s) IS NULL AS missing;

-- table_columns: the columns of a table
SELECT attname AS name
FROM pg_attribute
WHERE attrelid = to_regclass(%(table)s) AND attnum > 0 AND NOT attisdropped;

-- applied_migrations: what `procqueue migrate` has applied, with checksums
SELECT name, checksum FROM procqueue.schema_migrations;

-- record_migration: remember an applied migration
INSERT INTO procqueue.schema_migrations (name, checksum) VALUES (%(name)s, %(checksum)s)
ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now();

-- preflight_schemas: the queue's schemas: present, and usable by this role (procqueue/engine/preflight.py)
SELECT wanted.name, n.oid IS NOT NULL AS present,
       coalesce(has_schema_privilege(n.oid, 'USAGE'), false) AS usable
FROM unnest(%(schemas)s::text[]) WITH ORDINALITY AS wanted (name, position)
LEFT JOIN pg_namespace AS n ON n.nspname = wanted.name
ORDER BY wanted.position;

-- preflight_missing_names: which of these names no function, table or type of a schema has
SELECT wanted.name
FROM unnest(%(names)s::text[]) AS wanted (name)
JOIN pg_namespace AS n ON n.nspname = %(schema)s
WHERE NOT EXISTS (SELECT FROM pg_proc AS p WHERE p.pronamespace = n.oid AND p.proname = wanted.name)
  AND NOT EXISTS (SELECT FROM pg_class AS c WHERE c.relnamespace = n.oid AND c.relname = wanted.name)
  AND NOT EXISTS (SELECT FROM pg_type AS t WHERE t.typnamespace = n.oid AND t.typname = wanted.name)
ORDER BY 1;

-- preflight_missing_privileges: what this role lacks of what the worker uses: EXECUTE on the queue's functions, SELECT on its tables, and writing Procrastinate's
SELECT 'EXECUTE on function ' || p.oid::regprocedure::text AS missing
FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
WHERE n.nspname = ANY (%(schemas)s) AND p.prokind = 'f'
  AND NOT has_function_privilege(p.oid, 'EXECUTE')
UNION ALL
SELECT privilege || ' on table ' || c.oid::regclass::text
FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) AS privilege
WHERE n.nspname = ANY (%(schemas)s) AND c.relkind IN ('r', 'p')
  AND (privilege = 'SELECT' OR n.nspname = %(written)s)
  AND NOT has_table_privilege(c.oid, privilege)
ORDER BY 1;

-- preflight_tables: the tables the worker reads: present, readable, and whether row-level security filters them for this role
SELECT wanted.schema_name, wanted.table_name, c.oid IS NOT NULL AS present,
       coalesce(has_schema_privilege(c.relnamespace, 'USAGE')
                AND has_table_privilege(c.oid, 'SELECT'), false) AS readable,
       coalesce(row_security_active(c.oid), false) AS filtered,
       coalesce(c.relforcerowsecurity, false) AS forced
FROM unnest(%(schemas)s::text[], %(tables)s::text[]) WITH ORDINALITY
     AS wanted (schema_name, table_name, position)
LEFT JOIN pg_namespace AS n ON n.nspname = wanted.schema_name
LEFT JOIN pg_class AS c ON c.relnamespace = n.oid AND c.relname = wanted.table_name
ORDER BY wanted.position;

-- worker_heartbeat: a worker's heartbeat and its jobs_done counter (migration 0022), and whether its row is still there (false: pruned, taken for dead)
WITH counted AS (
    UPDATE procqueue.worker_details SET jobs_done = %(jobs_done)s WHERE worker_id = %(worker_id)s
)
SELECT procrastinate.procrastinate_update_heartbeat_v1(%(worker_id)s),
       EXISTS (SELECT FROM procrastinate.procrastinate_workers WHERE id = %(worker_id)s) AS alive;

-- record_worker_details: what a worker is (host, pid, queues, concurrency...), written when it registers (migration 0022); nothing when its row is already gone
INSERT INTO procqueue.worker_details
    (worker_id, host, pid, name, queues, concurrency, listens, version, jobs_done)
SELECT w.id, %(host)s, %(pid)s, %(name)s, %(queues)s, %(concurrency)s, %(listens)s, %(version)s,
       %(jobs_done)s
FROM procrastinate.procrastinate_workers AS w WHERE w.id = %(worker_id)s
ON CONFLICT (worker_id) DO UPDATE
SET host = EXCLUDED.host, pid = EXCLUDED.pid, name = EXCLUDED.name, queues = EXCLUDED.queues,
    concurrency = EXCLUDED.concurrency, listens = EXCLUDED.listens, version = EXCLUDED.version,
    jobs_done = EXCLUDED.jobs_done;

-- reclaim_worker_jobs: a worker registered again takes back its running jobs not rescued yet
UPDATE procrastinate.procrastinate_jobs SET worker_id = %(worker_id)s
WHERE id = ANY(%(job_ids)s::bigint[]) AND status = 'doing' AND worker_id IS NULL
RETURNING id;

-- postpone_job: put a running job back to waiting, due at run_at, attempts unchanged, with the reason recorded (migration 0018); raises when it is no longer running
SELECT procqueue.postpone_job(%(job_id)s, %(run_at)s, %(reason)s);

-- release_unheld_jobs: this worker's running jobs that it does not hold, started more than %(after)s seconds ago (a fetch or claim that committed but whose answer was lost), back to waiting with no attempt spent (procqueue.postpone_job, migration 0018)
WITH unheld AS MATERIALIZED (
    SELECT j.id
    FROM procrastinate.procrastinate_jobs AS j
    WHERE j.worker_id = %(worker_id)s AND j.status = 'doing'
      AND j.id <> ALL(%(held)s::bigint[])
      AND (SELECT max(e.at) FROM procrastinate.procrastinate_events AS e
           WHERE e.job_id = j.id AND e.type = 'started')
          < now() - make_interval(secs => %(after)s)
)
SELECT unheld.id, procqueue.postpone_job(unheld.id, now(), %(reason)s) FROM unheld;

-- fetch_jobs: up to %(limit)s ready jobs of these queues (every queue if NULL) but the paused ones (procqueue.paused_queues, migration 0022: read once per fetch), now `doing` for this worker, in one statement (procqueue/engine/worker.py, one for each free slot); the rules of Procrastinate's procrastinate_fetch_job_v2, which takes one: a job whose lock has a running job, or a waiting one of higher priority or queued first, is not taken (so no two of one lock); highest priority, then oldest first; jobs another worker is taking are skipped. Run after walk_jobs_in_fetch_order (procqueue/queue/queries.sql) in the same transaction
WITH candidate AS (
    SELECT jobs.id
    FROM procrastinate.procrastinate_jobs AS jobs
    WHERE jobs.status = 'todo'
      AND (%(queues)s::varchar[] IS NULL OR jobs.queue_name = ANY(%(queues)s::varchar[]))
      AND jobs.queue_name::text <> ALL (ARRAY(SELECT p.queue_name FROM procqueue.paused_queues AS p))
      AND (jobs.scheduled_at IS NULL OR jobs.scheduled_at <= now())
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
