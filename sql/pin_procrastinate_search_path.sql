-- Procrastinate's functions name their tables and types unqualified. Pin their
-- search_path to its schema so that they work whoever calls them (psql, the
-- dashboard, a Supabase SQL editor session), not only connections that set it.
-- Re-applied by every `procqueue migrate`, so functions added by a Procrastinate
-- upgrade are pinned too.
DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN
        SELECT p.oid::regprocedure
        FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
        WHERE n.nspname = 'procrastinate' AND p.prokind = 'f'
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = procrastinate, pg_catalog, pg_temp', fn);
    END LOOP;
END;
$$;
