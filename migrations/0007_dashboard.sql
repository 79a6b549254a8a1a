-- The dashboard (docs/dashboard.md): an audit log of what admins did, and the
-- indexes its job list needs to page through millions of jobs by keyset
-- (newest first, `id < last seen id`) whatever the filter.

-- Who did what, when: every retry, cancel and sign-in made through the dashboard.
CREATE TABLE procqueue.dashboard_actions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    actor text NOT NULL,              -- the name given at sign-in ("local" with --local-only)
    remote_addr text,                 -- the client address as the dashboard saw it
    action text NOT NULL,             -- retry | retry_group | retry_all | cancel | sign_in | sign_in_refused
    target jsonb NOT NULL DEFAULT '{}',
    job_ids bigint[] NOT NULL DEFAULT '{}',
    outcome text NOT NULL
);
CREATE INDEX dashboard_actions_at_idx ON procqueue.dashboard_actions (at DESC, id DESC);

-- Job list filtered by status, task or queue: one backward index scan per page.
-- (Unfiltered pages walk the primary key.)
CREATE INDEX procqueue_jobs_status_id_idx
    ON procrastinate.procrastinate_jobs (status, id);
CREATE INDEX procqueue_jobs_task_id_idx
    ON procrastinate.procrastinate_jobs (task_name, id);
CREATE INDEX procqueue_jobs_queue_id_idx
    ON procrastinate.procrastinate_jobs (queue_name, id);

-- Search by entity id: sync jobs carry {"id": ...}, bulk jobs {"ids": [...]};
-- both are containment (@>) lookups in this index.
CREATE INDEX procqueue_jobs_args_idx
    ON procrastinate.procrastinate_jobs USING gin (args jsonb_path_ops);

REVOKE ALL ON ALL TABLES IN SCHEMA procqueue FROM PUBLIC;
