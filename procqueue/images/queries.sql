-- Named queries of the images feature (Cloudinary cleanup), in the manner of Procrastinate's
-- sql/queries.sql: a block starts with "-- name: description"; {braced} names
-- are identifiers filled in with psycopg.sql; %(named)s are parameters.

-- image_reference_candidates: URLs of one image column (text or text[]) containing a needle
SELECT found.url
FROM {schema}.{table} AS t
CROSS JOIN LATERAL procqueue.image_urls(to_jsonb(t.{column})) AS found (url)
WHERE EXISTS (
    SELECT FROM unnest(%(needles)s::text[]) AS needle (value)
    WHERE strpos(found.url, needle.value) > 0
)

-- image_cleanup_jobs: the image URLs the queue has seen removed, with their job's status
SELECT j.id, j.status::text AS status, url.value AS url
FROM procrastinate.procrastinate_jobs AS j
CROSS JOIN LATERAL jsonb_array_elements_text(
    CASE WHEN jsonb_typeof(j.args -> 'urls') = 'array' THEN j.args -> 'urls' ELSE '[]' END
) AS url (value)
WHERE j.task_name = %(task_name)s
ORDER BY j.id;
