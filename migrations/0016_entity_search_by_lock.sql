-- The job row gets cheaper (issue 14): the GIN index on `args` (0007) indexed every id
-- of every bulk job (500 entries per job) for the dashboard's search by entity. Jobs
-- of one row or object carry their key in their lock (`listing:<id>`), so that search
-- reads this narrow index instead; bulk jobs are found by task and then by their args
-- (benchmarks/RESULTS.md, "Job row").
DROP INDEX IF EXISTS procrastinate.procqueue_jobs_args_idx;
CREATE INDEX procqueue_jobs_lock_id_idx
    ON procrastinate.procrastinate_jobs (lock, id) WHERE lock IS NOT NULL;
