-- Operators pause and resume queues, and see who the workers are (docs/dashboard.md,
-- "Queues" and "Workers"; `procqueue pause|resume|queues`).

-- A paused queue: workers claim none of its jobs (procqueue/engine/queries.sql
-- fetch_jobs and procqueue/queue/queries.sql claim_jobs_like skip it) until the row
-- is deleted; running jobs finish. In Postgres, so that it outlives worker restarts
-- and holds for every worker at once.
CREATE TABLE procqueue.paused_queues (
    queue_name text PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now(),
    paused_by text NOT NULL,          -- the audit log's actor: `cli:<os user>` or the admin
    reason text
);
REVOKE ALL ON procqueue.paused_queues FROM PUBLIC;

-- What Procrastinate's procrastinate_workers row (an id and a heartbeat) does not say
-- about a procqueue worker: written when it registers, its jobs_done counter at each
-- heartbeat (procqueue/engine/worker.py). Goes with the worker's row: when it stops
-- (unregisters) or is pruned as dead.
CREATE TABLE procqueue.worker_details (
    worker_id bigint PRIMARY KEY
        REFERENCES procrastinate.procrastinate_workers (id) ON DELETE CASCADE,
    host text NOT NULL,
    pid integer NOT NULL,
    name text,                        -- `procqueue worker --name`
    queues text[],                    -- NULL: every queue
    concurrency integer NOT NULL,     -- jobs it runs at once (PROCQUEUE_CONCURRENCY)
    listens boolean NOT NULL,         -- LISTEN/NOTIFY, or polling (transaction pooler)
    version text NOT NULL,            -- procqueue's version
    started_at timestamptz NOT NULL DEFAULT now(),
    jobs_done bigint NOT NULL DEFAULT 0  -- attempts it ran to an end, as of its last heartbeat
);
REVOKE ALL ON procqueue.worker_details FROM PUBLIC;
