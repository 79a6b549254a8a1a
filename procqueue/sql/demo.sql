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
