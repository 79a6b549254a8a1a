-- The one sync trigger function for every synced table: FOR EACH STATEMENT, with
-- the statement's rows in transition tables (procqueue_new / procqueue_old). It
-- is attached three times per table (INSERT, UPDATE, DELETE: PostgreSQL allows
-- transition tables only on single-event triggers), configured by its arguments,
-- which `procqueue migrate` writes from the search slice's job specs
-- (procqueue/search/jobs.py) and settings:
--   TG_ARGV[0]  entity name: the namespace of its sync key (procqueue.sync_lock_key)
--   TG_ARGV[1]  primary key column
--   TG_ARGV[2]  queue name
--   TG_ARGV[3]  task name of this event's row job
--   TG_ARGV[4]  lock prefix of a row job: lock and queueing lock are prefix || id
--   TG_ARGV[5]  task name of the bulk job
--   TG_ARGV[6]  bulk threshold: a statement changing more rows enqueues bulk jobs
--   TG_ARGV[7]  bulk chunk size: ids per bulk job
--   TG_ARGV[8]  task name of the entity's drain job (also its lock)
--   TG_ARGV[9:] columns whose changes alone need no sync ('view_count', ...)
-- Up to the threshold (docs/bulk.md, "The write path"): one narrow row per changed
-- key in procqueue.sync_changes, coalesced with a waiting one, and the entity's
-- drain job only when none is waiting (an index read, no insert, no NOTIFY in the
-- common case under load). The entity's drain key is held shared until commit, so
-- the drain job this write relied on does not end before the change is visible.
-- A change row that a drain has claimed counts one more change (`changes`), so the
-- drain does not delete it after syncing an older read. Outside READ COMMITTED (a
-- REPEATABLE READ or SERIALIZABLE writer would fail on a row or job changed after
-- its snapshot) a row job per changed row, coalesced on its queueing lock after
-- taking the row's sync key shared, as before the change table. Above the threshold:
-- bulk jobs with chunks of ids, no queueing lock and no advisory lock (a bulk job is
-- never coalesced, so it only becomes visible once this transaction committed). Ids
-- only, never row snapshots: the worker reads the current rows. Re-applied by every
-- migrate.
CREATE OR REPLACE FUNCTION procqueue.enqueue_entity_sync()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = procrastinate, pg_catalog, pg_temp
AS $$
DECLARE
    entity text := TG_ARGV[0];
    key text := TG_ARGV[1];
    threshold integer := CASE WHEN TG_ARGV[6] ~ '^[0-9]{1,9}$' THEN TG_ARGV[6]::integer ELSE 50 END;
    chunk integer := CASE WHEN TG_ARGV[7] ~ '^[1-9][0-9]{0,8}$' THEN TG_ARGV[7]::integer ELSE 500 END;
    ids text[];
    differs text;
    jit text;
BEGIN
    -- A key column named `id` (every table of the sample schema) is read as a
    -- column: no JSON copy of the whole row on the user's write. PL/pgSQL plans a
    -- trigger function per trigger, so `o.id` only ever names this table's column;
    -- `#>> '{}'` gives the same text as `to_jsonb(row) ->> key` for any type.
    IF TG_OP = 'DELETE' AND key = 'id' THEN
        SELECT array_agg(to_jsonb(o.id) #>> '{}') INTO ids FROM procqueue_old AS o;
    ELSIF TG_OP = 'INSERT' AND key = 'id' THEN
        SELECT array_agg(to_jsonb(n.id) #>> '{}') INTO ids FROM procqueue_new AS n;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(to_jsonb(o) ->> key) INTO ids FROM procqueue_old AS o;
    ELSIF TG_OP = 'INSERT' THEN
        SELECT array_agg(to_jsonb(n) ->> key) INTO ids FROM procqueue_new AS n;
    ELSIF key = 'id' AND (SELECT count(*) FROM procqueue_new) <= threshold THEN
        -- Changed rows: any column but the ignored ones differs. As JSON: one
        -- cached plan, cheap for the few rows of an ordinary statement.
        SELECT array_agg(to_jsonb(coalesce(n.id, o.id)) #>> '{}') INTO ids
        FROM procqueue_new AS n FULL JOIN procqueue_old AS o ON o.id = n.id
        WHERE n.id IS NULL OR o.id IS NULL
           OR to_jsonb(n) - TG_ARGV[9:] IS DISTINCT FROM to_jsonb(o) - TG_ARGV[9:];
    ELSIF (SELECT count(*) FROM procqueue_new) <= threshold THEN
        SELECT array_agg(coalesce(n.id, o.id)) INTO ids
        FROM (SELECT d ->> key AS id, d - TG_ARGV[9:] AS d
              FROM (SELECT to_jsonb(r) AS d FROM procqueue_new AS r) AS x) AS n
        FULL JOIN (SELECT d ->> key AS id, d - TG_ARGV[9:] AS d
                   FROM (SELECT to_jsonb(r) AS d FROM procqueue_old AS r) AS x) AS o
            ON n.id = o.id
        WHERE n.d IS DISTINCT FROM o.d;
    ELSE
        -- The same test column by column, for many rows: about six times cheaper
        -- than converting every old and new row to JSON. Types without a plain
        -- equality (json, point, ...) are compared as text, so no type can make
        -- the statement fail.
        SELECT string_agg(
                   CASE WHEN a.atttypid = ANY (ARRAY[
                            'text', 'varchar', 'bpchar', 'int2', 'int4', 'int8', 'numeric',
                            'float4', 'float8', 'bool', 'uuid', 'date', 'timestamp',
                            'timestamptz', 'jsonb', '_text', '_varchar', '_int4', '_int8',
                            '_uuid']::regtype[])
                        THEN format('n.%1$I IS DISTINCT FROM o.%1$I', a.attname)
                        ELSE format('n.%1$I::text IS DISTINCT FROM o.%1$I::text', a.attname)
                   END, ' OR ' ORDER BY a.attnum)
        INTO differs
        FROM pg_attribute AS a
        WHERE a.attrelid = TG_RELID AND a.attnum > 0 AND NOT a.attisdropped
          AND a.attname <> ALL (TG_ARGV[9:]);
        -- One full join pairs old and new rows by key; a row whose key itself
        -- changed pairs with nothing, and both its keys need a job. Without JIT:
        -- the planner cannot count a transition table's rows, its estimate makes
        -- JIT compile the comparison, and that took longer than running it (0.25
        -- of 0.5 s for 100,000 rows). The user's own setting is back right after.
        jit := current_setting('jit');
        PERFORM set_config('jit', 'off', true);
        EXECUTE format(
            'SELECT array_agg(coalesce(n.%1$I, o.%1$I)::text)'
            ' FROM procqueue_new AS n FULL JOIN procqueue_old AS o ON o.%1$I = n.%1$I'
            ' WHERE n.%1$I IS NULL OR o.%1$I IS NULL OR %2$s',
            key, coalesce(differs, 'false'))
        INTO ids;
        PERFORM set_config('jit', jit, true);
    END IF;

    IF ids IS NULL THEN
        RETURN NULL;
    END IF;

    IF cardinality(ids) <= threshold
       AND current_setting('transaction_isolation') = 'read committed' THEN
        PERFORM pg_advisory_xact_lock_shared(procqueue.sync_drain_key(entity));
        INSERT INTO procqueue.sync_changes AS c (entity, entity_id)
        SELECT DISTINCT TG_ARGV[0], one.id FROM unnest(ids) AS one (id) WHERE one.id IS NOT NULL
        ON CONFLICT ON CONSTRAINT sync_changes_pkey DO UPDATE
            SET changes = c.changes + 1, claimed_by = NULL, claimed_until = NULL
            WHERE c.claimed_by IS NOT NULL;
        -- Under load a drain job waits: the write inserts no job and sends no NOTIFY.
        -- The read's snapshot is newer than the key held above. No queueing lock: a
        -- unique index would make this write wait for another writer's uncommitted
        -- drain job, and two writers of two entities could deadlock on each other's;
        -- two drain jobs made at once are harmless (one at a time, by their lock).
        IF NOT EXISTS (SELECT FROM procrastinate.procrastinate_jobs
                       WHERE lock = TG_ARGV[8] AND status = 'todo') THEN
            INSERT INTO procrastinate.procrastinate_jobs (queue_name, task_name, lock, args)
            VALUES (TG_ARGV[2], TG_ARGV[8], TG_ARGV[8], '{}');
        END IF;
    ELSIF cardinality(ids) <= threshold THEN
        -- Each row's key is taken before its job can be coalesced into a waiting one.
        WITH locked AS MATERIALIZED (
            SELECT one.id, pg_advisory_xact_lock_shared(procqueue.sync_lock_key(entity, one.id))
            FROM unnest(ids) AS one (id)
        )
        INSERT INTO procrastinate.procrastinate_jobs
            (queue_name, task_name, lock, queueing_lock, args)
        SELECT TG_ARGV[2], TG_ARGV[3], TG_ARGV[4] || locked.id, TG_ARGV[4] || locked.id,
               jsonb_build_object('id', locked.id)
        FROM locked
        ON CONFLICT (queueing_lock) WHERE status = 'todo' DO NOTHING;
    ELSE
        INSERT INTO procrastinate.procrastinate_jobs (queue_name, task_name, args)
        SELECT TG_ARGV[2], TG_ARGV[5], jsonb_build_object('ids', to_jsonb(ids[first:first + chunk - 1]))
        FROM generate_series(1, cardinality(ids), chunk) AS first;
    END IF;
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION procqueue.enqueue_entity_sync() FROM PUBLIC;

-- TRUNCATE fires no row or DELETE trigger (and Supabase grants it to the API roles),
-- so the sync tables get one more statement trigger: AFTER TRUNCATE, it enqueues the
-- entity's truncate job (procqueue/search/truncate.py), which deletes every document
-- whose row is gone when it runs. One waiting job at most (its queueing lock is its
-- task name): it reads the table when it runs, so a second TRUNCATE adds nothing.
--   TG_ARGV[0]  queue name
--   TG_ARGV[1]  task name of the truncate job
CREATE OR REPLACE FUNCTION procqueue.enqueue_entity_truncate()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = procrastinate, pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO procrastinate.procrastinate_jobs (queue_name, task_name, queueing_lock, args)
    VALUES (TG_ARGV[0], TG_ARGV[1], TG_ARGV[1], '{}')
    ON CONFLICT (queueing_lock) WHERE status = 'todo' DO NOTHING;
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION procqueue.enqueue_entity_truncate() FROM PUBLIC;
