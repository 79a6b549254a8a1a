-- Named queries, in the manner of Procrastinate's sql/queries.sql.
-- A block starts with "-- name: description". {braced} names are identifiers
-- (tables, columns) filled in with psycopg.sql; %(named)s are parameters.

-- try_lock_entity: take an entity's sync key exclusively, without waiting
SELECT pg_try_advisory_xact_lock(procqueue.sync_lock_key(%(entity)s, %(id)s)) AS locked;

-- read_entity_row: the current row of one entity, key and document columns
SELECT {columns} FROM {schema}.{table} WHERE {primary_key} = %(id)s;

-- read_entity_rows: every row of an entity's table, key and document columns
SELECT {columns} FROM {schema}.{table} ORDER BY {primary_key};

-- insert_job_error: record a failed attempt of a job
INSERT INTO procqueue.job_errors
    (job_id, attempt, task_name, queue_name, error_type, message, traceback, transient, final)
VALUES
    (%(job_id)s, %(attempt)s, %(task_name)s, %(queue_name)s, %(error_type)s, %(message)s,
     %(traceback)s, %(transient)s, %(final)s);

-- missing_table: whether a configured table exists
SELECT to_regclass(%(table)s) IS NULL AS missing;

-- table_columns: the columns of a table
SELECT attname AS name
FROM pg_attribute
WHERE attrelid = to_regclass(%(table)s) AND attnum > 0 AND NOT attisdropped;

-- applied_migrations: what `procqueue migrate` has applied, with checksums
SELECT name, checksum FROM procqueue.schema_migrations;

-- record_migration: remember an applied migration
INSERT INTO procqueue.schema_migrations (name, checksum) VALUES (%(name)s, %(checksum)s)
ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now();

-- queue_counts: jobs per status, for tests and the CLI
SELECT status::text AS status, count(*) AS count
FROM procrastinate.procrastinate_jobs GROUP BY status;
