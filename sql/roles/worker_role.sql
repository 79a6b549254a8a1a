-- A least-privilege role for procqueue workers (docs/operations.md, "The worker's
-- role"). Run it after `procqueue migrate`, as the role that ran it (on Supabase:
-- `postgres`, in the SQL editor or with psql), then give the role a password:
--     ALTER ROLE procqueue_worker PASSWORD '...';
-- and run workers with DATABASE_URL logging in as procqueue_worker (through
-- Supabase's pooler the user name is procqueue_worker.<project-ref>).
-- To use another name, replace procqueue_worker throughout.
--
-- Idempotent: run it again after a `procqueue migrate` that added tables or
-- functions (a worker refuses to start, naming this file, while a grant is missing).
-- It changes no role's defaults (no ALTER ROLE ... SET, no ALTER DEFAULT PRIVILEGES)
-- and grants nothing in schema auth.
--
-- BYPASSRLS: the worker must see every row of the tables it syncs; a row hidden by
-- row-level security would read as deleted and lose its document. (Creating a
-- BYPASSRLS role takes a superuser on plain PostgreSQL 15, a role with BYPASSRLS on
-- 16 and later; Supabase lets `postgres` do it.) No other attribute: not a
-- superuser, creates nothing, inherits nothing.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'procqueue_worker') THEN
        CREATE ROLE procqueue_worker
            LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION BYPASSRLS;
    END IF;
END;
$$;

-- The queue: Procrastinate's jobs, events, workers and functions ...
GRANT USAGE ON SCHEMA procrastinate TO procqueue_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA procrastinate TO procqueue_worker;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA procrastinate TO procqueue_worker;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA procrastinate TO procqueue_worker;

-- ... and procqueue's records (errors, deliveries, reindex targets), its enqueue and
-- health functions, and procqueue.notification_recipient() (the only way it reads
-- auth.users: email, phone, locale). It reads the migration records (the worker's
-- start checks) and the paused queues (its fetch skips them), and writes neither them
-- nor the dashboard's audit trail.
GRANT USAGE ON SCHEMA procqueue TO procqueue_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA procqueue TO procqueue_worker;
REVOKE INSERT, UPDATE, DELETE
    ON procqueue.schema_migrations, procqueue.dashboard_actions, procqueue.paused_queues
    FROM procqueue_worker;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA procqueue TO procqueue_worker;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA procqueue TO procqueue_worker;

-- What the worker reads in your schema: the synced tables (the sample's; list
-- yours from PROCQUEUE_ENTITIES_FILE), the notifications table, and the push
-- tokens (it deletes those FCM no longer accepts).
GRANT USAGE ON SCHEMA public TO procqueue_worker;
GRANT SELECT ON public.inventory_items, public.listings, public.notifications
    TO procqueue_worker;
GRANT SELECT, DELETE ON public.push_tokens TO procqueue_worker;
