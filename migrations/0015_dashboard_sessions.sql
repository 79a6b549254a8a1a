-- Dashboard sessions held server-side (docs/dashboard.md): the session cookie
-- carries only a random token; this table keeps its SHA-256, never the token.
-- Sign-out deletes the row, so a replayed cookie no longer works; a session ends
-- PROCQUEUE_DASHBOARD_SESSION_LIFETIME after created_at, checked on every request.
CREATE TABLE procqueue.dashboard_sessions (
    token_hash bytea PRIMARY KEY,
    actor text NOT NULL,        -- what the audit log records as who acted
    user_id text,               -- the Supabase Auth user id (sub); NULL with the shared secret
    email text,
    remote_addr text,           -- where the sign-in came from
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dashboard_sessions_created_at_idx ON procqueue.dashboard_sessions (created_at);
REVOKE ALL ON procqueue.dashboard_sessions FROM PUBLIC;
