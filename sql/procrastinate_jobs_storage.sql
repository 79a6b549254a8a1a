-- A bulk job carries up to 500 ids (about 20 KB of args). PostgreSQL compresses values
-- that large with pglz by default, and ids (uuids) do not compress: that compression
-- cost about 1 ms per bulk job inside the user's statement, half of what the triggers
-- added to a 100,000-row UPDATE (benchmarks/RESULTS.md, "Bulk operations"). So args
-- are stored uncompressed (still out of line when large). Re-applied by every
-- `procqueue migrate`, so it survives a Procrastinate upgrade that rebuilds the table;
-- the ALTER (a short exclusive lock) runs only when the setting is missing.
DO $$
BEGIN
    IF EXISTS (
        SELECT FROM pg_catalog.pg_attribute
        WHERE attrelid = 'procrastinate.procrastinate_jobs'::regclass
          AND attname = 'args' AND attstorage <> 'e'
    ) THEN
        ALTER TABLE procrastinate.procrastinate_jobs ALTER COLUMN args SET STORAGE EXTERNAL;
    END IF;
END;
$$;
