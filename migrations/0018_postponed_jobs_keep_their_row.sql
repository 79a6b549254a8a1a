-- A postponed job is the same job, waiting: a sink whose circuit is open, a writer
-- still holding the row, a rate limit put the job's own row back to `todo`, due at
-- the new time, attempts unchanged (until 0018 the job ended `succeeded` and a new
-- row was inserted: green for work not done, and one more row per probe in an outage).
-- The reason is kept here: a job reads "postponed" while it is `todo` with the same
-- attempts as when it was postponed (a later retry or run makes the row history).
CREATE TABLE procqueue.job_postponements (
    job_id bigint PRIMARY KEY
        REFERENCES procrastinate.procrastinate_jobs (id) ON DELETE CASCADE,
    attempts integer NOT NULL,
    reason text NOT NULL,
    times integer NOT NULL DEFAULT 1,
    first_postponed_at timestamptz NOT NULL DEFAULT now(),
    postponed_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON procqueue.job_postponements FROM PUBLIC;

-- Put running job `job_id` back to `todo`, due at `run_at`, with `reason` recorded.
-- Raises as Procrastinate's own functions do when the job is no longer `doing` (the
-- stalled-job rescue took it): the worker then drops this outcome. A job whose abort
-- was requested ends `aborted` instead. Not an attempt's end: the `deferred_for_retry`
-- event Procrastinate's trigger writes for doing -> todo is removed, so health and task
-- stats count no retry. The queueing lock (given up by 0008's trigger on any return to
-- `todo`) is taken back when no newer waiting job holds it, so later writes coalesce.
CREATE FUNCTION procqueue.postpone_job(job_id bigint, run_at timestamptz, reason text)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    _found record;
BEGIN
    SELECT j.attempts, j.abort_requested, j.queueing_lock
      FROM procrastinate.procrastinate_jobs AS j
     WHERE j.id = postpone_job.job_id AND j.status = 'doing'
       FOR UPDATE
      INTO _found;
    IF NOT FOUND THEN
        RAISE 'Job was not found or not in "doing" status (job id: %)', postpone_job.job_id;
    END IF;
    IF _found.abort_requested THEN
        UPDATE procrastinate.procrastinate_jobs
           SET status = 'aborted'
         WHERE id = postpone_job.job_id;
        RETURN;
    END IF;
    UPDATE procrastinate.procrastinate_jobs
       SET status = 'todo', scheduled_at = run_at
     WHERE id = postpone_job.job_id;
    DELETE FROM procrastinate.procrastinate_events AS e
     WHERE e.job_id = postpone_job.job_id AND e.type = 'deferred_for_retry' AND e.at = now();
    IF _found.queueing_lock IS NOT NULL THEN
        BEGIN
            UPDATE procrastinate.procrastinate_jobs AS j
               SET queueing_lock = _found.queueing_lock
             WHERE j.id = postpone_job.job_id
               AND NOT EXISTS (
                   SELECT FROM procrastinate.procrastinate_jobs AS w
                    WHERE w.queueing_lock = _found.queueing_lock AND w.status = 'todo');
        EXCEPTION WHEN unique_violation THEN
            NULL;  -- a newer job took the lock meanwhile: this one runs first by its `lock`
        END;
    END IF;
    INSERT INTO procqueue.job_postponements AS p (job_id, attempts, reason)
    VALUES (postpone_job.job_id, _found.attempts, left(reason, 2000))
    ON CONFLICT ON CONSTRAINT job_postponements_pkey DO UPDATE
       SET attempts = excluded.attempts, reason = excluded.reason,
           times = p.times + 1, postponed_at = now();
END;
$$;
REVOKE ALL ON FUNCTION procqueue.postpone_job(bigint, timestamptz, text) FROM PUBLIC;
