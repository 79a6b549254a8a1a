-- The one row trigger for every synced table, configured by its arguments:
--   TG_ARGV[0]  entity name, the task prefix ('listing' -> 'listing:update')
--   TG_ARGV[1]  primary key column
--   TG_ARGV[2]  queue name
--   TG_ARGV[3:] columns whose changes alone need no sync ('view_count', ...)
-- It enqueues the entity id only, never a row snapshot: the worker reads the
-- current row when it runs. Re-applied by every `procqueue migrate`.
CREATE OR REPLACE FUNCTION procqueue.enqueue_entity_sync()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = procrastinate, pg_catalog, pg_temp
AS $$
DECLARE
    entity text := TG_ARGV[0];
    row_data jsonb;
    entity_id text;
    operation text;
    lock_name text;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF (to_jsonb(OLD) - TG_ARGV[3:]) = (to_jsonb(NEW) - TG_ARGV[3:]) THEN
            RETURN NULL;
        END IF;
    END IF;

    IF TG_OP = 'DELETE' THEN
        row_data := to_jsonb(OLD);
        operation := 'delete';
    ELSE
        row_data := to_jsonb(NEW);
        operation := CASE TG_OP WHEN 'INSERT' THEN 'create' ELSE 'update' END;
    END IF;

    entity_id := row_data ->> TG_ARGV[1];
    lock_name := entity || ':' || entity_id;

    PERFORM pg_advisory_xact_lock_shared(procqueue.sync_lock_key(entity, entity_id));
    PERFORM procqueue.add_job(
        task_name => entity || ':' || operation,
        args => jsonb_build_object('id', entity_id),
        queue_name => TG_ARGV[2],
        job_lock => lock_name,
        queueing_lock => lock_name
    );
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION procqueue.enqueue_entity_sync() FROM PUBLIC;
