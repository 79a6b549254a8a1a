-- Dashboard roles (docs/dashboard.md, "Roles"): each session remembers whether its
-- user is an admin (may act) or a viewer (reads every page, changes nothing).
-- Sessions opened before roles existed were all admins'; a session written without
-- a role (an older dashboard during a rolling upgrade) is read-only.
ALTER TABLE procqueue.dashboard_sessions
    ADD COLUMN role text NOT NULL DEFAULT 'admin'
        CONSTRAINT dashboard_sessions_role_check CHECK (role IN ('admin', 'viewer'));
ALTER TABLE procqueue.dashboard_sessions ALTER COLUMN role SET DEFAULT 'viewer';
