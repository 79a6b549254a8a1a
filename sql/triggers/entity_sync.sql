-- The one sync trigger function for every synced table: FOR EACH STATEMENT, with
-- the statement's rows in transition tables (procqueue_new / procqueue_old). It
-- is attached three times per table (INSERT, UPDATE, DELETE: PostgreSQL allows
-- transition tables only on single-event triggers), configured by its arguments:
--   TG_ARGV[0]  entity name, the task prefix ('listing' -> 'listing:update')
--   TG_ARGV[1]  primary key column
--   TG_ARGV[2]  queue name
--   TG_ARGV[3]  bulk threshold: a statement changing more rows enqueues bulk jobs
--   TG_ARGV[4]  bulk chunk size: ids per `<entity>:bulk` job
--   TG_ARGV[5:] columns whose changes alone need no sync ('view_count', ...)
-- (3 and 4 are written by `procqueue migrate` from PROCQUEUE_BULK_THRESHOLD and
-- PROCQUEUE_BULK_CHUNK_SIZE.)
-- Up to the threshold: one `<entity>:create|update|delete` job per changed row,
-- coalesced on its queueing lock, after taking the row's sync key shared (at
-- most `threshold` advisory locks). Above it: `<entity>:bulk` jobs with chunks of
-- ids, no queueing lock and no advisory lock (a bulk job is never coalesced, so it
-- only becomes visible once this transaction committed). Ids only, never row
-- snapshots: the worker reads the current rows. Re-applied by every migrate.
CREATE OR REPLACE FUNCTION procqueue.enqueue_entity_sync()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = procrastinate, pg_catalog, pg_temp
AS $$
DECLARE
    entity text := TG_ARGV[0];
    key text := TG_ARGV[1];
    threshold integer := CASE WHEN TG_ARGV[3] ~ '^[0-9]{1,9}$' THEN TG_ARGV[3]::integer ELSE 50 END;
    chunk integer := CASE WHEN TG_ARGV[4] ~ '^[1-9][0-9]{0,8}$' THEN TG_ARGV[4]::integer ELSE 500 END;
    operation text := CASE TG_OP WHEN 'INSERT' THEN 'create' WHEN 'DELETE' THEN 'delete'
                                 ELSE 'update' END;
    ids text[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(to_jsonb(n) ->> key) INTO ids FROM procqueue_new AS n;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(to_jsonb(o) ->> key) INTO ids FROM procqueue_old AS o;
    ELSE
        -- Changed rows: document or key columns differ (ignored columns removed).
        SELECT array_agg(coalesce(n.id, o.id)) INTO ids
        FROM (SELECT d ->> key AS id, d - TG_ARGV[5:] AS d
              FROM (SELECT to_jsonb(r) AS d FROM procqueue_new AS r) AS x) AS n
        FULL JOIN (SELECT d ->> key AS id, d - TG_ARGV[5:] AS d
                   FROM (SELECT to_jsonb(r) AS d FROM procqueue_old AS r) AS x) AS o
            ON n.id = o.id
        WHERE n.d IS DISTINCT FROM o.d;
    END IF;

    IF ids IS NULL THEN
        RETURN NULL;
    END IF;

    IF cardinality(ids) <= threshold THEN
        -- Each row's key is taken before its job can be coalesced into a waiting one.
        WITH locked AS MATERIALIZED (
            SELECT one.id, pg_advisory_xact_lock_shared(procqueue.sync_lock_key(entity, one.id))
            FROM unnest(ids) AS one (id)
        )
        INSERT INTO procrastinate.procrastinate_jobs
            (queue_name, task_name, lock, queueing_lock, args)
        SELECT TG_ARGV[2], entity || ':' || operation, entity || ':' || locked.id,
               entity || ':' || locked.id, jsonb_build_object('id', locked.id)
        FROM locked
        ON CONFLICT (queueing_lock) WHERE status = 'todo' DO NOTHING;
    ELSE
        INSERT INTO procrastinate.procrastinate_jobs (queue_name, task_name, args)
        SELECT TG_ARGV[2], entity || ':bulk', jsonb_build_object('ids', jsonb_agg(part.id))
        FROM (SELECT one.id, (one.n - 1) / chunk AS number
              FROM unnest(ids) WITH ORDINALITY AS one (id, n)) AS part
        GROUP BY part.number;
    END IF;
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION procqueue.enqueue_entity_sync() FROM PUBLIC;
