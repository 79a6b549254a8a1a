-- Bulk operations (docs/bulk.md): sync versions, reindex targets, per-item errors.

-- Every read of a row for the index takes a number from this sequence, while the
-- entity's publish key is held: a later read gets a larger number, and writes to
-- Elasticsearch carry it as an external version, so an older read can never
-- overwrite a newer one. It starts far above any internal version a document
-- indexed before this migration can have.
CREATE SEQUENCE procqueue.sync_version AS bigint START WITH 1000000000 CACHE 1;

-- A sync job holds this key shared while it reads rows and writes their documents;
-- a bulk job and a reindex chunk hold it exclusively. So reads-and-writes of one
-- row never interleave, whichever job does them. Same high bits as the entity's
-- sync_lock_key buckets (0..1023), low bits 1024: no collision with them.
CREATE FUNCTION procqueue.sync_publish_key(entity text)
    RETURNS bigint
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
AS $$
    SELECT (pg_catalog.hashtext('procqueue:' OPERATOR(pg_catalog.||) entity)::bigint << 32)
        | 1024::bigint;
$$;

-- Indexes being built by `procqueue reindex`: every sync writes to them too, so a
-- change committed during a reindex reaches the new index. resume_after is the
-- last primary key copied (as text): an interrupted reindex continues there.
CREATE TABLE procqueue.search_targets (
    entity text NOT NULL,
    index_name text NOT NULL,
    resume_after text,
    copied bigint NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (entity, index_name)
);

-- Documents a bulk job could not write for good (or after its retries), one row
-- per id and reason, so one bad row never hides among 499 good ones.
CREATE TABLE procqueue.sync_item_errors (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id bigint,
    entity text NOT NULL,
    entity_id text NOT NULL,
    index_name text NOT NULL,
    status integer NOT NULL,
    reason text NOT NULL,
    occurred_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sync_item_errors_entity_id_idx ON procqueue.sync_item_errors (entity, entity_id);

REVOKE ALL ON procqueue.search_targets, procqueue.sync_item_errors FROM PUBLIC;
REVOKE ALL ON SEQUENCE procqueue.sync_version FROM PUBLIC;
REVOKE ALL ON FUNCTION procqueue.sync_publish_key(text) FROM PUBLIC;
