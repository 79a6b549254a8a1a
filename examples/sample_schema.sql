-- The marketplace schema procqueue serves, for the demo and the tests. On
-- Supabase the API roles, schema `auth` and `auth.users` exist already and belong
-- to Supabase: this file then leaves them alone (it creates, alters and grants
-- nothing in `auth`). On plain PostgreSQL it creates stand-ins for them. The user
-- owns these tables: `procqueue migrate` never creates or alters them.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN
        CREATE ROLE anon NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'service_role') THEN
        CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
    END IF;
END;
$$;

-- A stand-in for Supabase Auth, only where there is none. Like Supabase's, the API
-- roles may use the schema (for auth.uid() in policies) but not read auth.users.
DO $$
BEGIN
    IF to_regclass('auth.users') IS NULL THEN
        CREATE SCHEMA IF NOT EXISTS auth;
        CREATE TABLE auth.users (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            email text,
            -- What a user sets with auth.updateUser({ data }); procqueue reads the
            -- notification locale from raw_user_meta_data->>'locale' ('tr' or 'en').
            raw_user_meta_data jsonb DEFAULT '{}'
        );
        CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $uid$
            SELECT coalesce(
                nullif(current_setting('request.jwt.claim.sub', true), ''),
                nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
            )::uuid
        $uid$;
        GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
    END IF;
END;
$$;

CREATE TABLE IF NOT EXISTS public.inventory_items (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid REFERENCES auth.users (id),
    name text NOT NULL,
    category text,
    description text,
    condition text,
    estimated_value numeric(12, 2),
    main_image_url text,
    additional_image_urls text[] NOT NULL DEFAULT '{}',
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.listings (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid REFERENCES auth.users (id),
    title text NOT NULL,
    description text,
    category text,
    budget numeric(12, 2),
    location text,
    status text NOT NULL DEFAULT 'pending_approval'
        CHECK (status IN ('pending_approval', 'active', 'rejected', 'inactive', 'sold')),
    main_image_url text,
    additional_image_urls text[] NOT NULL DEFAULT '{}',
    inventory_item_id uuid REFERENCES public.inventory_items (id) ON DELETE SET NULL,
    view_count integer NOT NULL DEFAULT 0,
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.notifications (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    recipient_user_id uuid REFERENCES auth.users (id),
    type text,
    data jsonb,
    is_read boolean DEFAULT false,
    created_at timestamptz DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.push_tokens (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid REFERENCES auth.users (id),
    token text UNIQUE,
    platform text,
    created_at timestamptz DEFAULT now()
);

-- Supabase's default grants: the API roles can use public's tables (on Supabase
-- the default privileges already give them this); row-level security decides which
-- rows. procqueue's worker role sees every row (BYPASSRLS, as Supabase's postgres).
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
GRANT ALL ON ALL TABLES IN SCHEMA public TO anon, authenticated, service_role;

ALTER TABLE public.inventory_items ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.listings ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.notifications ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.push_tokens ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS inventory_items_owner ON public.inventory_items;
CREATE POLICY inventory_items_owner ON public.inventory_items
    FOR ALL TO authenticated USING (user_id = auth.uid()) WITH CHECK (user_id = auth.uid());
DROP POLICY IF EXISTS listings_owner ON public.listings;
CREATE POLICY listings_owner ON public.listings
    FOR ALL TO authenticated USING (user_id = auth.uid()) WITH CHECK (user_id = auth.uid());
DROP POLICY IF EXISTS listings_public_read ON public.listings;
CREATE POLICY listings_public_read ON public.listings
    FOR SELECT TO anon, authenticated USING (status = 'active');
DROP POLICY IF EXISTS notifications_recipient ON public.notifications;
CREATE POLICY notifications_recipient ON public.notifications
    FOR ALL TO authenticated
    USING (recipient_user_id = auth.uid()) WITH CHECK (recipient_user_id = auth.uid());
DROP POLICY IF EXISTS push_tokens_owner ON public.push_tokens;
CREATE POLICY push_tokens_owner ON public.push_tokens
    FOR ALL TO authenticated USING (user_id = auth.uid()) WITH CHECK (user_id = auth.uid());

-- The marketplace's own rule (the user's, not procqueue's): when a moderator
-- moves a listing from pending_approval to active or rejected, its owner gets
-- a LISTING_APPROVED / LISTING_REJECTED notification. procqueue's trigger on
-- notifications then enqueues its email and push jobs.
CREATE OR REPLACE FUNCTION public.notify_listing_review()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
AS $$
BEGIN
    IF OLD.status = 'pending_approval' AND NEW.status IN ('active', 'rejected')
            AND NEW.user_id IS NOT NULL THEN
        INSERT INTO public.notifications (recipient_user_id, type, data)
        VALUES (
            NEW.user_id,
            CASE NEW.status WHEN 'active' THEN 'LISTING_APPROVED' ELSE 'LISTING_REJECTED' END,
            jsonb_build_object('listing_id', NEW.id, 'listing_title', NEW.title)
        );
    END IF;
    RETURN NULL;
END;
$$;
CREATE OR REPLACE TRIGGER listing_review_notification
    AFTER UPDATE OF status ON public.listings
    FOR EACH ROW EXECUTE FUNCTION public.notify_listing_review();
