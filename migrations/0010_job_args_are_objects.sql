-- A job's args are its task's keyword arguments: a JSON object. Anything else
-- ('"oops"'::jsonb, an array, a number, null) crashed Procrastinate before it
-- recorded an outcome: the job stayed `doing` under a live worker, and its lock
-- blocked every later job of its row. Such args are refused at enqueue from now on,
-- by procqueue.add_job and by a direct INSERT alike: one CHECK, a jsonb_typeof per
-- inserted row (the triggers build their args with jsonb_build_object, which
-- always passes). The worker also fails such a job, recorded, if one exists
-- (procqueue/worker.py).

-- Jobs written before: a waiting or running one is failed with its reason recorded,
-- and every one keeps its args under "invalid_args" (so that the CHECK holds).
INSERT INTO procqueue.job_errors
    (job_id, attempt, task_name, queue_name, error_type, message, traceback, transient, final)
SELECT j.id, j.attempts + 1, j.task_name, j.queue_name, 'procqueue.worker.InvalidJobArgs',
       'job args must be a JSON object of keyword arguments, got a JSON '
           || jsonb_typeof(j.args) || ': ' || left(j.args::text, 200)
           || ' (failed by migration 0010; the args are kept under "invalid_args")',
       '', false, true
FROM procrastinate.procrastinate_jobs AS j
WHERE jsonb_typeof(j.args) <> 'object' AND j.status IN ('todo', 'doing');

UPDATE procrastinate.procrastinate_jobs
SET args = jsonb_build_object('invalid_args', args),
    status = CASE WHEN status IN ('todo', 'doing') THEN 'failed' ELSE status END,
    attempts = CASE WHEN status = 'doing' THEN attempts + 1 ELSE attempts END
WHERE jsonb_typeof(args) <> 'object';

ALTER TABLE procrastinate.procrastinate_jobs
    ADD CONSTRAINT procqueue_job_args_are_an_object CHECK (jsonb_typeof(args) = 'object');
COMMENT ON CONSTRAINT procqueue_job_args_are_an_object ON procrastinate.procrastinate_jobs IS
    'A job''s args are its task''s keyword arguments: enqueue a JSON object, e.g. '
    'procqueue.add_job(''<task>'', ''{"id": "..."}''::jsonb, ''<queue>'')';
