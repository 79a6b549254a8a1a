-- Procrastinate's fetch query skips a job while another job with the same lock
-- is waiting or running. Its indexes cover `lock` only for running jobs (or as
-- the second column of (id, lock)), so with a backlog every fetch scanned every
-- waiting job: draining N jobs cost O(N^2). Every procqueue sync job has a lock,
-- so index the locks of active jobs.
CREATE INDEX IF NOT EXISTS procqueue_jobs_active_lock_idx
    ON procrastinate.procrastinate_jobs (lock)
    WHERE status IN ('todo', 'doing') AND lock IS NOT NULL;
