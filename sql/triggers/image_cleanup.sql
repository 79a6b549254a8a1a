-- Image cleanup: when image URLs disappear from a row (DELETE, or an UPDATE whose
-- new image columns lack URLs the old ones had), enqueue the cleanup job
-- (procqueue/images/jobs.py) with the removed URLs. The job is never coalesced (no queueing lock): every removal
-- reaches a worker, which deletes from Cloudinary only the assets that no row of
-- any configured table references any more when it runs (after the grace period).
-- Re-applied by every `procqueue migrate`.

-- The URLs in an image column's value: a text column gives one, a text[] column
-- its elements (jsonpath's lax mode treats a single value as a one-element
-- array); NULLs, empty strings, non-strings and absurdly long values give none.
-- The worker's reference check reads image columns with it; the trigger below
-- applies the same rule inline.
CREATE OR REPLACE FUNCTION procqueue.image_urls(value jsonb)
    RETURNS SETOF text
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
AS $$
    SELECT found.url
    FROM (
        SELECT pg_catalog.jsonb_path_query(value, 'lax $[*] ? (@.type() == "string")') #>> '{}'
    ) AS found (url)
    WHERE found.url <> '' AND pg_catalog.length(found.url) <= 4096
$$;
REVOKE ALL ON FUNCTION procqueue.image_urls(jsonb) FROM PUBLIC;

-- The one trigger for every table with image columns: for each row on UPDATE and
-- DELETE, and BEFORE TRUNCATE for the statement (a TRUNCATE fires no row trigger:
-- every URL the table holds is removed, in jobs of 100). Configured by its
-- arguments, which `procqueue migrate` writes from the cleanup job's spec and the
-- settings:
--   TG_ARGV[0]  entity name (recorded in the job, for the logs)
--   TG_ARGV[1]  queue name
--   TG_ARGV[2]  task name
--   TG_ARGV[3]  grace period in seconds (PROCQUEUE_IMAGE_CLEANUP_GRACE); the job
--               runs no earlier
--   TG_ARGV[4:] image columns (text or text[])
-- It reads only to_jsonb(OLD/NEW) -> column, so a missing or odd column can
-- never make the user's write fail: it simply yields no URL.
CREATE OR REPLACE FUNCTION procqueue.enqueue_image_cleanup()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = procrastinate, pg_catalog, pg_temp
AS $$
DECLARE
    old_row jsonb := to_jsonb(OLD);
    new_row jsonb := CASE WHEN TG_OP = 'UPDATE' THEN to_jsonb(NEW) ELSE '{}'::jsonb END;
    grace double precision := CASE
        WHEN TG_ARGV[3] ~ '^[0-9]{1,9}(\.[0-9]+)?$' THEN TG_ARGV[3]::double precision
        ELSE 600
    END;
    removed text[];
    batch_job bigint;
    chunk record;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        -- Only the configured columns the table has: a missing one yields no URL.
        EXECUTE format(
            'SELECT coalesce(array_agg(DISTINCT found.url ORDER BY found.url), ''{}'') '
            'FROM %I.%I AS t CROSS JOIN LATERAL unnest($1) AS c (image_column) '
            'CROSS JOIN LATERAL procqueue.image_urls(to_jsonb(t) -> c.image_column) '
            'AS found (url)', TG_TABLE_SCHEMA, TG_TABLE_NAME)
        INTO removed
        USING ARRAY(SELECT a.attname::text FROM pg_attribute AS a
                    WHERE a.attrelid = TG_RELID AND a.attnum > 0 AND NOT a.attisdropped
                      AND a.attname = ANY (TG_ARGV[4:]));
        PERFORM procqueue.add_job(
            task_name => TG_ARGV[2],
            args => jsonb_build_object('urls', to_jsonb(part.urls), 'entity', TG_ARGV[0]),
            queue_name => TG_ARGV[1],
            run_at => now() + make_interval(secs => grace))
        FROM (SELECT array_agg(one.url ORDER BY one.n) AS urls
              FROM unnest(removed) WITH ORDINALITY AS one (url, n)
              GROUP BY (one.n - 1) / 100) AS part;
        RETURN NULL;
    END IF;

    SELECT coalesce(array_agg(gone.url ORDER BY gone.url), '{}')
    INTO removed
    FROM (
        -- procqueue.image_urls(), written out: twice as fast per row as calling it.
        SELECT jsonb_path_query(old_row -> image_column, 'lax $[*] ? (@.type() == "string")')
            #>> '{}'
        FROM unnest(TG_ARGV[4:]) AS image_column
        EXCEPT
        SELECT jsonb_path_query(new_row -> image_column, 'lax $[*] ? (@.type() == "string")')
            #>> '{}'
        FROM unnest(TG_ARGV[4:]) AS image_column
    ) AS gone (url)
    WHERE gone.url <> '' AND length(gone.url) <= 4096;

    IF cardinality(removed) = 0 THEN
        RETURN NULL;
    END IF;

    -- A job holds at most 100 URLs (what one Admin API call deletes; the worker's
    -- reference check and delete stay bounded per job, docs/images.md). Batched per
    -- transaction (a bulk UPDATE or DELETE gives one job per 100 URLs, not one per
    -- row): the URLs join the job this transaction enqueued last (remembered in a
    -- transaction-local setting) when they fit in it. Only a job row written by this
    -- very transaction (xmin), still invisible to workers, is ever extended; anything
    -- else makes new jobs: a row that lost 50,000 URLs (an API user can write that
    -- many) gives 500 jobs of 100, never one job of 50,000.
    batch_job := CASE WHEN current_setting('procqueue.image_job', true) ~ '^[0-9]{1,18}$'
                      THEN current_setting('procqueue.image_job', true)::bigint END;
    IF batch_job IS NOT NULL AND cardinality(removed) < 100 THEN
        UPDATE procrastinate.procrastinate_jobs AS job
        SET args = jsonb_set(job.args, '{urls}', (
            SELECT to_jsonb(array_agg(DISTINCT merged.url ORDER BY merged.url))
            FROM (SELECT jsonb_array_elements_text(job.args -> 'urls')
                  UNION ALL SELECT unnest(removed)) AS merged (url)))
        WHERE job.id = batch_job
          AND job.task_name = TG_ARGV[2]
          AND job.xmin = xid(pg_current_xact_id())
          AND jsonb_array_length(job.args -> 'urls') + cardinality(removed) <= 100
        RETURNING job.id INTO batch_job;
        IF FOUND THEN
            RETURN NULL;
        END IF;
    END IF;
    FOR chunk IN
        SELECT array_agg(one.url ORDER BY one.n) AS urls
        FROM unnest(removed) WITH ORDINALITY AS one (url, n)
        GROUP BY (one.n - 1) / 100
        ORDER BY (one.n - 1) / 100
    LOOP
        batch_job := procqueue.add_job(
            task_name => TG_ARGV[2],
            args => jsonb_build_object('urls', to_jsonb(chunk.urls), 'entity', TG_ARGV[0]),
            queue_name => TG_ARGV[1],
            run_at => now() + make_interval(secs => grace)
        );
    END LOOP;
    -- The last job is the one with room left.
    PERFORM set_config('procqueue.image_job', batch_job::text, true);
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION procqueue.enqueue_image_cleanup() FROM PUBLIC;
