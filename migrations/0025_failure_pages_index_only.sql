-- The overview and the failures page at 1,000,000 jobs (issue 25): both read every
-- failed job, and each one's row was a heap visit somewhere in the table (the
-- overview's failed count per queue: ~13,000 blocks for 30,000 failed jobs), then,
-- for the failure groups, one probe per job into its error rows, each read from the
-- heap and sorted to find the last one (benchmarks/RESULTS.md, "Overview and failures
-- at 1,000,000 jobs (issue 25)").

-- Failed jobs with their queue and task in the index: counts per queue and the
-- failure groups read this index alone. It replaces 0006's index of failed ids (same
-- rows, same order, still the one `procqueue failed` pages by), so a job's write
-- costs no extra index: only a job that fails for good writes an entry, a few bytes
-- wider than before.
CREATE INDEX procqueue_jobs_failed_names_idx
    ON procrastinate.procrastinate_jobs (id) INCLUDE (queue_name, task_name)
    WHERE status = 'failed';
DROP INDEX IF EXISTS procrastinate.procqueue_jobs_failed_idx;

-- A job's error rows in order, with the type and time of each: the last error of
-- every failed job is read from this index alone (the failure groups). It replaces
-- 0001's index on job_id (the lookups and deletes by job go through this one).
CREATE INDEX job_errors_job_last_idx
    ON procqueue.job_errors (job_id, id) INCLUDE (error_type, occurred_at);
DROP INDEX IF EXISTS procqueue.job_errors_job_id_idx;
