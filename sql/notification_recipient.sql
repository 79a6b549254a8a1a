-- The address book entry of one user, from auth.users, for the notification
-- worker: email, phone and the locale in raw_user_meta_data. SECURITY DEFINER,
-- owned by the role that runs `procqueue migrate` (on Supabase `postgres`, which may
-- read auth.users), so that a worker role needs no privilege in schema auth
-- (sql/roles/worker_role.sql grants it none: nothing in auth is ours to grant) and
-- sees these four fields only, never a password hash. Not callable by PUBLIC.
-- Re-applied by every `procqueue migrate`.
CREATE OR REPLACE FUNCTION procqueue.notification_recipient(wanted uuid)
    RETURNS TABLE (user_id text, email text, phone text, locale text)
    LANGUAGE plpgsql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- plpgsql: the body is not checked against auth.users until it runs, so the
    -- queue installs on a database without one (no notifications there).
    RETURN QUERY
    SELECT u.id::text, u.email::text, to_jsonb(u) ->> 'phone',
           to_jsonb(u) -> 'raw_user_meta_data' ->> 'locale'
    FROM auth.users AS u
    WHERE u.id = wanted;
END;
$$;
REVOKE ALL ON FUNCTION procqueue.notification_recipient(uuid) FROM PUBLIC;
