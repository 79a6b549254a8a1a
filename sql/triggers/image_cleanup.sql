-- Image cleanup: when image URLs disappear from a row (DELETE, or an UPDATE whose
-- new image columns lack URLs the old ones had), enqueue `images:cleanup` with
-- the removed URLs. The job is never coalesced (no queueing lock): every removal
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

-- The one row trigger for every table with image columns, configured by its arguments:
--   TG_ARGV[0]  entity name (recorded in the job, for the logs)
--   TG_ARGV[1]  queue name
--   TG_ARGV[2]  grace period in seconds (written by `procqueue migrate` from
--               PROCQUEUE_IMAGE_CLEANUP_GRACE); the job runs no earlier
--   TG_ARGV[3:] image columns (text or text[])
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
        WHEN TG_ARGV[2] ~ '^[0-9]{1,9}(\.[0-9]+)?$' THEN TG_ARGV[2]::double precision
        ELSE 600
    END;
    removed text[];
BEGIN
    SELECT coalesce(array_agg(gone.url ORDER BY gone.url), '{}')
    INTO removed
    FROM (
        -- procqueue.image_urls(), written out: twice as fast per row as calling it.
        SELECT jsonb_path_query(old_row -> image_column, 'lax $[*] ? (@.type() == "string")')
            #>> '{}'
        FROM unnest(TG_ARGV[3:]) AS image_column
        EXCEPT
        SELECT jsonb_path_query(new_row -> image_column, 'lax $[*] ? (@.type() == "string")')
            #>> '{}'
        FROM unnest(TG_ARGV[3:]) AS image_column
    ) AS gone (url)
    WHERE gone.url <> '' AND length(gone.url) <= 4096;

    IF cardinality(removed) = 0 THEN
        RETURN NULL;
    END IF;

    PERFORM procqueue.add_job(
        task_name => 'images:cleanup',
        args => jsonb_build_object('urls', to_jsonb(removed), 'entity', TG_ARGV[0]),
        queue_name => TG_ARGV[1],
        run_at => now() + make_interval(secs => grace)
    );
    RETURN NULL;
END;
$$;
REVOKE ALL ON FUNCTION procqueue.enqueue_image_cleanup() FROM PUBLIC;
