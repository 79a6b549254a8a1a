-- A job going back to `todo` (an automatic retry, a stalled-job rescue, a retry
-- by hand) gives up its queueing lock. Otherwise, when a newer job with the same
-- queueing lock was enqueued while it ran (a write to the row during the sync),
-- Procrastinate's retry UPDATE would break the unique index on waiting queueing
-- locks: the retry fails inside the worker, the job stays `doing` for good, and
-- its `lock` then blocks every later job of that entity.
-- Without the queueing lock the retried job still holds its `lock`, so it runs
-- before the newer job (lower id), never beside it; only coalescing into it is lost.
CREATE FUNCTION procqueue.release_queueing_lock()
    RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.queueing_lock := NULL;
    RETURN NEW;
END;
$$;
REVOKE ALL ON FUNCTION procqueue.release_queueing_lock() FROM PUBLIC;

CREATE TRIGGER procqueue_release_queueing_lock_on_retry
    BEFORE UPDATE OF status ON procrastinate.procrastinate_jobs
    FOR EACH ROW
    WHEN (NEW.status = 'todo' AND OLD.status <> 'todo' AND NEW.queueing_lock IS NOT NULL)
    EXECUTE FUNCTION procqueue.release_queueing_lock();
