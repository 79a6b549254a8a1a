-- Named queries of the search feature (Elasticsearch sync, reindex, verify, reconciliation), in the manner of Procrastinate's
-- sql/queries.sql: a block starts with "-- name: description"; {braced} names
-- are identifiers filled in with psycopg.sql; %(named)s are parameters.

-- try_lock_entity: take an entity's sync key exclusively, without waiting
SELECT pg_try_advisory_xact_lock(procqueue.sync_lock_key(%(entity)s, %(id)s)) AS locked;

-- read_entity_row: the current row of one entity: its key and its search document (entity_document_columns)
SELECT {columns} FROM {schema}.{table} AS t WHERE t.{primary_key} = %(id)s;

-- read_entity_rows: every row of an entity's table: key and search document (entity_document_columns)
SELECT {columns} FROM {schema}.{table} AS t ORDER BY t.{primary_key};

-- lock_publish_shared: a sync job's hold on its entity's publish key, until its write is done (docs/bulk.md)
SELECT pg_advisory_xact_lock_shared(procqueue.sync_publish_key(%(entity)s));

-- lock_publish_exclusive: a bulk job's or reindex chunk's hold on its entity's publish key
SELECT pg_advisory_xact_lock(procqueue.sync_publish_key(%(entity)s));

-- sync_stamp: the external version of this read, and the indexes a reindex is building
SELECT nextval('procqueue.sync_version') AS version,
       ARRAY(SELECT t.index_name FROM procqueue.search_targets AS t
             WHERE t.entity = %(entity)s ORDER BY t.index_name) AS targets;

-- advance_sync_version: every later stamp is above %(floor)s (a document version raised outside procqueue, which writes stamped lower would take for newer): a small gap is drawn with nextval, so no stamp is ever handed out twice; a gap above a million is jumped with setval (a concurrent read would need a million stamps between the two calls to be passed)
SELECT CASE
    WHEN n.v >= %(floor)s::bigint THEN n.v
    WHEN %(floor)s::bigint - n.v > 1000000 THEN setval('procqueue.sync_version', %(floor)s::bigint)
    ELSE (SELECT max(nextval('procqueue.sync_version'))
          FROM generate_series(1, %(floor)s::bigint - n.v))
END AS version
FROM (SELECT nextval('procqueue.sync_version') AS v) AS n;

-- read_entity_chunk: the current rows of a chunk of ids: key and search document (entity_document_columns)
SELECT {columns} FROM {schema}.{table} AS t WHERE t.{primary_key} = ANY(%(ids)s);

-- read_entity_page: one keyset page of an entity's rows, in key order: key and search document (entity_document_columns)
SELECT {columns} FROM {schema}.{table} AS t {after} ORDER BY t.{primary_key} LIMIT %(limit)s;

-- existing_entity_ids: which of these ids have a row
SELECT {primary_key}::text AS id FROM {schema}.{table} WHERE {primary_key} = ANY(%(ids)s);

-- existing_entity_ids_as_text: the same, for ids the key's type cannot hold
SELECT {primary_key}::text AS id FROM {schema}.{table} WHERE {primary_key}::text = ANY(%(ids)s);

-- entity_ids_after: every key after a resume point, in the key's own order (a reindex's server-side cursor; t.{primary_key}, not the text alias: an integer key resumes by integer order)
SELECT t.{primary_key}::text AS id FROM {schema}.{table} AS t {after} ORDER BY t.{primary_key};

-- estimate_rows: the planner's row count of a table (cheap, for progress bars)
SELECT greatest(reltuples, 0)::bigint AS estimate FROM pg_class WHERE oid = to_regclass(%(table)s);

-- record_item_error: a document a bulk job could not write for good
INSERT INTO procqueue.sync_item_errors (job_id, entity, entity_id, index_name, status, reason)
VALUES (%(job_id)s, %(entity)s, %(entity_id)s, %(index_name)s, %(status)s, %(reason)s);

-- reindex_targets: the indexes being built for an entity, with their resume points
SELECT index_name, resume_after, copied FROM procqueue.search_targets WHERE entity = %(entity)s;

-- register_reindex_target: from now on every sync of the entity also writes this index
INSERT INTO procqueue.search_targets (entity, index_name) VALUES (%(entity)s, %(index_name)s)
ON CONFLICT (entity, index_name) DO NOTHING;

-- reindex_checkpoint: remember how far a reindex copied
UPDATE procqueue.search_targets SET resume_after = %(resume_after)s, copied = %(copied)s
WHERE entity = %(entity)s AND index_name = %(index_name)s;

-- drop_reindex_target: the index is live (or abandoned): syncs stop writing it separately
DELETE FROM procqueue.search_targets WHERE entity = %(entity)s AND index_name = %(index_name)s;

-- reconcile_cursor: where an entity's reconciliation goes on (procqueue/search/reconcile.py)
INSERT INTO procqueue.reconcile_cursors (entity) VALUES (%(entity)s)
ON CONFLICT (entity) DO UPDATE SET updated_at = now()
RETURNING after_key;

-- reconcile_advance: remember the last key checked (NULL: the pass is over, start again)
UPDATE procqueue.reconcile_cursors
SET after_key = %(after_key)s, updated_at = now(),
    last_pass_ended_at = CASE WHEN %(after_key)s::text IS NULL THEN now() ELSE last_pass_ended_at END,
    pass_started_at = CASE WHEN after_key IS NULL THEN now() ELSE pass_started_at END
WHERE entity = %(entity)s;

-- entity_document_columns: what an entity read of row t returns (procqueue/search/document.py, docs/bulk.md): the key as text; the search document as JSON text, {fields} rendered by their types' rules from each column's first elements (procqueue.search_head: an array field holds at most max_array_length), or NULL when the columns' text alone ({text_bytes}, measured without converting a huge value) is over {limit} bytes; that size; and {trimmed}: the fields cut to max_array_length, as 'column:elements' (NULL: none)
t.{primary_key}::text AS {primary_key},
CASE WHEN {text_bytes} <= {limit}
     THEN (SELECT to_json(f)::text FROM (SELECT {fields}) AS f) END AS procqueue_document,
{text_bytes} AS procqueue_text_bytes,
nullif(array_remove(ARRAY[{trimmed}]::text[], NULL), '{{}}') AS procqueue_trimmed

-- search_value: one field's JSON value by its type's rule ({scalar} on {value}); an array element by element ({element} on e.value)
CASE WHEN json_typeof({value}) = 'array'
     THEN (SELECT coalesce(json_agg({element} ORDER BY e.n), '[]')
           FROM json_array_elements({value}) WITH ORDINALITY AS e (value, n))
     ELSE {scalar} END

-- search_value_date: a date field's value: an ISO date or time with a four-digit year, else null ('infinity', '-infinity', BC, year 10000 on: Elasticsearch refuses them)
CASE WHEN json_typeof({value}) = 'string'
          AND {value}::text !~ '^"[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9](T[0-9:.+-]*)?"$'
     THEN NULL ELSE {value} END

-- search_value_number: a number field's value: null for NaN, an infinity, or a number outside the field type's range [{low}, {high}]; {number} makes one in range (of ({value}::text)::numeric) what the field stores
CASE WHEN json_typeof({value}) = 'number'
     THEN CASE WHEN ({value}::text)::numeric BETWEEN {low} AND {high} THEN {number} END
     WHEN json_typeof({value}) = 'string'
          AND lower({value}::text) IN ('"nan"', '"infinity"', '"-infinity"')
     THEN NULL ELSE {value} END

-- search_value_double: a number in range as the double Elasticsearch stores, as Python reads a double (one too small for a double is 0)
to_json(CASE WHEN abs({number}) < 1e-320 THEN 0 ELSE {number} END::float8)

-- column_text_bytes: about the size of a column's text, cheaply: its stored size when small, else the length of its text (no conversion for text types, whose length is in their header)
coalesce(CASE WHEN pg_column_size({column}) > 1024 THEN octet_length({column}::text)
              ELSE pg_column_size({column}) END, 0)

-- ids_without_pending_sync: which of these ids no waiting change and no waiting or running
-- sync job covers (a row job locked on it, or a bulk job carrying it): those the
-- reconciliation repairs.
-- A job running for more than %(overrun_after)s seconds covers nothing: no live worker
-- holds one that long (procqueue/queue/maintenance.py takes it back)
WITH trusted AS MATERIALIZED (
    SELECT job.id, job.lock, job.args
    FROM procrastinate.procrastinate_jobs AS job
    WHERE job.status IN ('todo', 'doing') AND job.task_name = ANY(%(tasks)s)
      AND (job.status = 'todo'
           OR (SELECT max(e.at) FROM procrastinate.procrastinate_events AS e
               WHERE e.job_id = job.id AND e.type = 'started')
              >= now() - make_interval(secs => %(overrun_after)s))
), in_bulk AS MATERIALIZED (
    SELECT DISTINCT jsonb_array_elements_text(trusted.args -> 'ids') AS id
    FROM trusted WHERE jsonb_typeof(trusted.args -> 'ids') = 'array'
)
SELECT wanted.id FROM unnest(%(ids)s::text[]) AS wanted (id)
WHERE NOT EXISTS (
    SELECT FROM trusted WHERE trusted.lock = %(lock_prefix)s || wanted.id
)
AND NOT EXISTS (SELECT FROM in_bulk WHERE in_bulk.id = wanted.id)
AND NOT EXISTS (SELECT FROM procqueue.sync_changes AS c
                WHERE c.entity = %(entity)s AND c.entity_id = wanted.id);

-- try_lock_entities: take the sync keys of many rows of one entity exclusively, without waiting: the ids whose key this transaction now holds
SELECT wanted.id FROM unnest(%(ids)s::text[]) AS wanted (id)
WHERE pg_try_advisory_xact_lock(procqueue.sync_lock_key(%(entity)s, wanted.id));

-- search_trimmed: {column} as 'name:elements' when it holds more than {max_array_length} elements, else NULL
CASE WHEN procqueue.search_array_length({column}) > {max_array_length}
     THEN {column_name} || ':' || procqueue.search_array_length({column}) END

-- row_security_off: for the rest of this transaction, a read that row-level security would filter raises instead ("query would be affected by row-level security policy"): a row hidden from the worker must never read as deleted (procqueue/errors.py RowsHidden); transaction-local, so safe behind a transaction pooler
SET LOCAL row_security = off;

-- claim_changes: up to %(limit)s waiting changes of an entity for drain job %(job_id)s (its own from an earlier run, free ones, and those whose claim ran out or whose job is no longer running), skipping rows a writer holds (its change is not committed yet), in key order; held until %(lease)s seconds from now
UPDATE procqueue.sync_changes AS c
SET claimed_by = %(job_id)s, claimed_until = now() + make_interval(secs => %(lease)s)
FROM (SELECT s.entity, s.entity_id FROM procqueue.sync_changes AS s
      WHERE s.entity = %(entity)s
        AND (s.claimed_by IS NULL OR s.claimed_by = %(job_id)s OR s.claimed_until < now()
             OR NOT EXISTS (SELECT FROM procrastinate.procrastinate_jobs AS job
                            WHERE job.id = s.claimed_by AND job.status = 'doing'))
      ORDER BY s.entity, s.entity_id
      LIMIT %(limit)s
      FOR UPDATE SKIP LOCKED) AS free
WHERE c.entity = free.entity AND c.entity_id = free.entity_id
RETURNING c.entity_id, c.changes;

-- forget_changes: the synced changes of drain job %(job_id)s that no write came after (their count unchanged since the claim), skipping rows a writer holds
DELETE FROM procqueue.sync_changes AS c
USING (SELECT s.entity, s.entity_id FROM procqueue.sync_changes AS s
       JOIN unnest(%(ids)s::text[], %(changes)s::integer[]) AS synced (entity_id, changes)
         ON s.entity_id = synced.entity_id AND s.changes = synced.changes
       WHERE s.entity = %(entity)s AND s.claimed_by = %(job_id)s
       FOR UPDATE OF s SKIP LOCKED) AS done
WHERE c.entity = done.entity AND c.entity_id = done.entity_id
RETURNING c.entity_id;

-- release_changes: drain job %(job_id)s gives back what it still holds (a write after its claim already freed those it touched), skipping rows a writer holds
UPDATE procqueue.sync_changes AS c SET claimed_by = NULL, claimed_until = NULL
FROM (SELECT s.entity, s.entity_id FROM procqueue.sync_changes AS s
      WHERE s.entity = %(entity)s AND s.claimed_by = %(job_id)s
      FOR UPDATE OF s SKIP LOCKED) AS held
WHERE c.entity = held.entity AND c.entity_id = held.entity_id;

-- try_lock_drain: take the entity's drain key exclusively without waiting: true once no writer that may have relied on a waiting drain job is still in its transaction (procqueue.sync_drain_key)
SELECT pg_try_advisory_xact_lock(procqueue.sync_drain_key(%(entity)s)) AS quiet;

-- changes_waiting: whether an entity has changes a drain could claim now (free, or held by a claim that ran out or whose job is no longer running)
SELECT EXISTS (SELECT FROM procqueue.sync_changes AS s
               WHERE s.entity = %(entity)s
                 AND (s.claimed_by IS NULL OR s.claimed_until < now()
                      OR NOT EXISTS (SELECT FROM procrastinate.procrastinate_jobs AS job
                                     WHERE job.id = s.claimed_by AND job.status = 'doing'))) AS waiting;

-- drain_missing: whether an entity has changes a drain could claim now and no drain job (%(task)s, its lock) waiting or running to take them (the reconciliation then makes one)
SELECT EXISTS (SELECT FROM procqueue.sync_changes AS s
               WHERE s.entity = %(entity)s
                 AND (s.claimed_by IS NULL OR s.claimed_until < now()
                      OR NOT EXISTS (SELECT FROM procrastinate.procrastinate_jobs AS job
                                     WHERE job.id = s.claimed_by AND job.status = 'doing')))
   AND NOT EXISTS (SELECT FROM procrastinate.procrastinate_jobs AS job
                   WHERE job.lock = %(task)s AND job.status IN ('todo', 'doing')) AS missing;

-- enqueue_drain: the entity's drain job (%(task)s: its task name and lock) on %(queue)s, unless one waits already (as the sync trigger makes it: no queueing lock, so no wait on another transaction's)
INSERT INTO procrastinate.procrastinate_jobs (queue_name, task_name, lock, args)
SELECT %(queue)s, %(task)s::text, %(task)s::text, '{}'
WHERE NOT EXISTS (SELECT FROM procrastinate.procrastinate_jobs
                  WHERE lock = %(task)s::text AND status = 'todo');

-- why_change: the waiting change of one row (procqueue.sync_changes), and whether a running drain job holds its claim now
SELECT c.changed_at, c.changes, c.claimed_by, c.claimed_until,
       (c.claimed_by IS NOT NULL AND c.claimed_until >= now()
        AND EXISTS (SELECT FROM procrastinate.procrastinate_jobs AS job
                    WHERE job.id = c.claimed_by AND job.status = 'doing')) AS claim_live
FROM procqueue.sync_changes AS c
WHERE c.entity = %(entity)s AND c.entity_id = %(id)s;

-- why_jobs: the newest sync jobs of one row, any status: its row jobs (their lock %(lock)s), the bulk jobs (%(bulk_task)s) carrying its id, and the drain jobs (%(drain_task)s, also their lock) that hold its waiting change (%(claimed_by)s) or, while it waits (since %(changed_at)s), may take it or failed meanwhile (a failed drain gives its claims back); with the postponement of the job's current attempt, if any. Each branch reads an index (lock; task_name, id)
SELECT job.id, job.task_name, job.status::text AS status, job.attempts, job.scheduled_at,
       pp.reason AS postponed_reason, pp.times AS postponed_times
FROM (SELECT j.id FROM procrastinate.procrastinate_jobs AS j WHERE j.lock = %(lock)s
      UNION
      SELECT j.id FROM procrastinate.procrastinate_jobs AS j
      WHERE j.task_name = %(bulk_task)s AND j.args -> 'ids' ? %(id)s
      UNION
      SELECT j.id FROM procrastinate.procrastinate_jobs AS j
      WHERE j.lock = %(drain_task)s
        AND (j.id = %(claimed_by)s
             OR (%(changed_at)s::timestamptz IS NOT NULL
                 AND (j.status IN ('todo', 'doing')
                      OR EXISTS (SELECT FROM procqueue.job_errors AS e
                                 WHERE e.job_id = j.id
                                   AND e.occurred_at >= %(changed_at)s::timestamptz))))
     ) AS found
JOIN procrastinate.procrastinate_jobs AS job ON job.id = found.id
LEFT JOIN procqueue.job_postponements AS pp
       ON pp.job_id = job.id AND pp.attempts = job.attempts AND job.status = 'todo'
ORDER BY job.id DESC
LIMIT %(limit)s;

-- why_attempts: the newest failed attempts of these jobs, with their errors (procqueue.job_errors)
SELECT e.job_id, e.task_name, e.attempt, e.error_type, e.message, e.transient, e.final,
       e.occurred_at
FROM procqueue.job_errors AS e
WHERE e.job_id = ANY(%(job_ids)s)
ORDER BY e.id DESC
LIMIT %(limit)s;

-- why_item_errors: the newest documents of one row a bulk job or a reindex could not write for good
SELECT job_id, index_name, status, reason, occurred_at
FROM procqueue.sync_item_errors
WHERE entity = %(entity)s AND entity_id = %(id)s
ORDER BY id DESC
LIMIT %(limit)s;

-- why_circuit: the sink's circuit, when the workers last saw it open
SELECT sink, opened_at, reason FROM procqueue.sink_circuits WHERE sink = %(sink)s AND is_open;

-- why_image_cleanups: the waiting or running image cleanup jobs (%(task)s) carrying any of these URLs, with those URLs
SELECT job.id, job.status::text AS status, job.scheduled_at,
       ARRAY(SELECT u FROM jsonb_array_elements_text(job.args -> 'urls') AS u
             WHERE u = ANY(%(urls)s)) AS urls
FROM procrastinate.procrastinate_jobs AS job
WHERE job.task_name = %(task)s AND job.status IN ('todo', 'doing')
  AND jsonb_typeof(job.args -> 'urls') = 'array' AND job.args -> 'urls' ?| %(urls)s
ORDER BY job.id;
