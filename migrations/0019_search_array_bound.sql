-- A hostile row is bounded before it is sent (issue 22): an array field of a search
-- document holds at most the entity's `max_array_length` elements (docs/bulk.md, "What
-- a document holds"). A listing an API user wrote with 50,000 image URLs took 14 s to
-- index (an indexer's cost grows with the values of a field), outlived the client's
-- timeout and opened the circuit for every other row. The entity read queries
-- (procqueue/search/queries.sql: entity_document_columns) call these on every field,
-- whatever its type, so one query shape serves every column: the overloads pick the
-- rule by the column's type (an array, json or jsonb, anything else), and inline to the
-- column itself for the types that are never arrays.

-- The first `n` elements of an array (of a multi-dimensional one: the first rows,
-- at most `n` elements in all; none when one row is longer); an array of at most `n`
-- elements as it is. Its bounds do not matter: trim_array cuts from the end.
CREATE FUNCTION procqueue.search_head(value anyarray, n integer)
    RETURNS anyarray
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN pg_catalog.cardinality(value) <= n THEN value
        ELSE pg_catalog.trim_array(value, pg_catalog.array_length(value, 1) - LEAST(
            pg_catalog.array_length(value, 1),
            n / (pg_catalog.cardinality(value) / pg_catalog.array_length(value, 1))))
    END
$$;

-- A JSON array's first `n` elements; any other JSON value as it is.
CREATE FUNCTION procqueue.search_head(value jsonb, n integer)
    RETURNS jsonb
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN pg_catalog.jsonb_typeof(value) = 'array' AND pg_catalog.jsonb_array_length(value) > n
        THEN pg_catalog.jsonb_path_query_array(
            value, '$[0 to $last]', pg_catalog.jsonb_build_object('last', n - 1))
        ELSE value
    END
$$;

CREATE FUNCTION procqueue.search_head(value json, n integer)
    RETURNS json
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN pg_catalog.json_typeof(value) = 'array' AND pg_catalog.json_array_length(value) > n
        THEN (SELECT pg_catalog.json_agg(e.value ORDER BY e.position)
              FROM pg_catalog.json_array_elements(value) WITH ORDINALITY AS e (value, position)
              WHERE e.position <= n)
        ELSE value
    END
$$;

-- Any other value (text, numbers, dates, composites...): as it is.
CREATE FUNCTION procqueue.search_head(value anynonarray, n integer)
    RETURNS anynonarray
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
AS $$
    SELECT value
$$;

-- How many elements a value holds when search_head would cut it: an array's elements,
-- a JSON array's; NULL for every other value.
CREATE FUNCTION procqueue.search_array_length(value anyarray)
    RETURNS integer
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
AS $$
    SELECT pg_catalog.cardinality(value)
$$;

CREATE FUNCTION procqueue.search_array_length(value jsonb)
    RETURNS integer
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
AS $$
    SELECT CASE WHEN pg_catalog.jsonb_typeof(value) = 'array'
                THEN pg_catalog.jsonb_array_length(value) END
$$;

CREATE FUNCTION procqueue.search_array_length(value json)
    RETURNS integer
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
AS $$
    SELECT CASE WHEN pg_catalog.json_typeof(value) = 'array'
                THEN pg_catalog.json_array_length(value) END
$$;

CREATE FUNCTION procqueue.search_array_length(value anynonarray)
    RETURNS integer
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
AS $$
    SELECT NULL::integer
$$;

REVOKE ALL ON FUNCTION procqueue.search_head(anyarray, integer), procqueue.search_head(jsonb, integer),
    procqueue.search_head(json, integer), procqueue.search_head(anynonarray, integer),
    procqueue.search_array_length(anyarray), procqueue.search_array_length(jsonb),
    procqueue.search_array_length(json), procqueue.search_array_length(anynonarray)
FROM PUBLIC;
