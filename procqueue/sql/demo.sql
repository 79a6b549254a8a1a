-- Named queries of the composition roots (the demo), in the manner of Procrastinate's
-- sql/queries.sql: a block starts with "-- name: description"; {braced} names
-- are identifiers filled in with psycopg.sql; %(named)s are parameters.

-- demo_database_state: a database's comment (the demo's marker) and how many sessions use it
SELECT shobj_description(d.oid, 'pg_database') AS comment,
       (SELECT count(*) FROM pg_stat_activity AS a WHERE a.datid = d.oid) AS sessions
FROM pg_database AS d WHERE d.datname = %(name)s;

-- demo_current_marker: the comment on this connection's database (the demo's marker, or not)
SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = current_database();

-- demo_has_sample_rows: whether the sample tables hold rows already (the demo seeds only empty ones)
SELECT EXISTS (SELECT FROM public.inventory_items) OR EXISTS (SELECT FROM public.listings);

-- demo_image_urls: every image URL of the sample rows (the Cloudinary stand-in holds their assets)
SELECT url FROM public.inventory_items, unnest(array_prepend(main_image_url, additional_image_urls)) AS url
WHERE url IS NOT NULL
UNION
SELECT url FROM public.listings, unnest(array_prepend(main_image_url, additional_image_urls)) AS url
WHERE url IS NOT NULL;

-- demo_story_approve: a moderator approves the seed's waiting listing (its owner's email and push)
UPDATE public.listings SET status = 'active' WHERE status = 'pending_approval';

-- demo_story_replace_image: an item's second photo replaced (the old one is cleaned up)
UPDATE public.inventory_items
SET additional_image_urls = ARRAY[replace(additional_image_urls[1], '_b.jpg', '_c.jpg')]
WHERE name = 'Bisiklet 1';
