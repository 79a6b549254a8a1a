-- The marketplace schema procqueue serves (DESIGN.md), for the demo and the
-- tests. On Supabase the roles and auth.users exist already; on plain
-- PostgreSQL this file creates stand-ins for them. The user owns these tables:
-- `procqueue migrate` never creates or alters them.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN
        CREATE ROLE anon NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'service_role') THEN
        CREATE ROLE service_role NOLOGIN BYPASSRLS;
    END IF;
END;
$$;

CREATE SCHEMA IF NOT EXISTS auth;
CREATE TABLE IF NOT EXISTS auth.users (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email text
);

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

-- Supabase's default grants: the API roles can use public's tables.
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
GRANT ALL ON ALL TABLES IN SCHEMA public TO anon, authenticated, service_role;
GRANT USAGE ON SCHEMA auth TO authenticated, service_role;
GRANT SELECT ON auth.users TO authenticated, service_role;
