-- What a Supabase project's database has before its owner writes anything: the
-- part of supabase/postgres's init scripts and migrations that procqueue meets,
-- reproduced on plain PostgreSQL. The machine's superuser plays supabase_admin;
-- pq_postgres plays Supabase's `postgres` role: NOSUPERUSER BYPASSRLS, USAGE but
-- (since 2025) no CREATE on schema auth, member of the API roles.
-- Run by a superuser in the new database; roles are cluster-wide, so they are
-- created when missing and their attributes set again.

DO $$
DECLARE
    role_spec text[];
BEGIN
    FOREACH role_spec SLICE 1 IN ARRAY ARRAY[
        ['anon', 'NOLOGIN NOINHERIT'],
        ['authenticated', 'NOLOGIN NOINHERIT'],
        ['service_role', 'NOLOGIN NOINHERIT BYPASSRLS'],
        ['authenticator', 'LOGIN NOINHERIT'],
        ['supabase_auth_admin', 'LOGIN NOINHERIT CREATEROLE'],
        ['pq_postgres', 'LOGIN NOSUPERUSER INHERIT CREATEDB CREATEROLE REPLICATION BYPASSRLS']
    ] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_spec[1]) THEN
            EXECUTE format('CREATE ROLE %I', role_spec[1]);
        END IF;
        EXECUTE format('ALTER ROLE %I %s', role_spec[1], role_spec[2]);
    END LOOP;
END;
$$;
GRANT anon, authenticated, service_role TO authenticator;
GRANT anon, authenticated, service_role TO pq_postgres;
GRANT pg_read_all_data, pg_signal_backend, pg_monitor TO pq_postgres;
ALTER ROLE pq_postgres SET search_path TO "$user", public, extensions;

DO $$
BEGIN
    EXECUTE format('GRANT ALL ON DATABASE %I TO pq_postgres', current_database());
END;
$$;

CREATE SCHEMA extensions;
CREATE EXTENSION IF NOT EXISTS "uuid-ossp" WITH SCHEMA extensions;
GRANT USAGE ON SCHEMA extensions TO pq_postgres, anon, authenticated, service_role;

GRANT ALL ON SCHEMA public TO pq_postgres;
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE pq_postgres IN SCHEMA public
    GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE pq_postgres IN SCHEMA public
    GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE pq_postgres IN SCHEMA public
    GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;

CREATE SCHEMA auth;
CREATE TABLE auth.users (
    instance_id uuid,
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    aud varchar(255),
    role varchar(255),
    email varchar(255),
    encrypted_password varchar(255),
    raw_app_meta_data jsonb,
    raw_user_meta_data jsonb,
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz DEFAULT now()
);
ALTER TABLE auth.users OWNER TO supabase_auth_admin;
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
    )::uuid
$$;
CREATE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        nullif(current_setting('request.jwt.claim.role', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'
    )::text
$$;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role, pq_postgres;
GRANT ALL ON SCHEMA auth TO supabase_auth_admin;
GRANT ALL ON ALL TABLES IN SCHEMA auth TO supabase_auth_admin, pq_postgres;
GRANT ALL ON ALL ROUTINES IN SCHEMA auth TO supabase_auth_admin, pq_postgres;
