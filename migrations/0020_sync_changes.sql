-- A change costs what it must (docs/bulk.md, "The write path"): the sync trigger of
-- a single-row (or small) statement records each changed key here, one narrow row
-- per (entity, key), coalesced while it waits, and makes one Procrastinate drain job
-- per entity only when none is waiting; a drain job claims a batch of these rows,
-- syncs them with one read and one `_bulk`, and deletes what it synced.
--   changes   how many writes since the row was claimed: a drain deletes a row only
--             if no write came after its claim (the coalescing race, docs/bulk.md)
--   claimed_by / claimed_until   the drain job holding the row, and until when: a
--             claim outlives no job (a killed worker's rows are free again then)
CREATE TABLE procqueue.sync_changes (
    entity text NOT NULL,
    entity_id text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    changes integer NOT NULL DEFAULT 1,
    claimed_by bigint,
    claimed_until timestamptz,
    PRIMARY KEY (entity, entity_id)
) WITH (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.0,
        autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_insert_scale_factor = 0.0,
        autovacuum_vacuum_insert_threshold = 10000);
REVOKE ALL ON procqueue.sync_changes FROM PUBLIC;

-- Writers of an entity's changes hold this key shared until they commit; a drain
-- job ends only once it can take it exclusively (without waiting) and sees no
-- change left: so a change whose writer relied on a waiting drain job is never left
-- without one. Same high bits as the entity's sync_lock_key buckets (0..1023) and
-- publish key (1024); low bits 1025.
CREATE FUNCTION procqueue.sync_drain_key(entity text)
    RETURNS bigint
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
AS $$
    SELECT (pg_catalog.hashtext('procqueue:' OPERATOR(pg_catalog.||) entity)::bigint << 32)
        | 1025::bigint;
$$;
REVOKE ALL ON FUNCTION procqueue.sync_drain_key(text) FROM PUBLIC;
