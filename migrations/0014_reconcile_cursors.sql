-- Where the periodic reconciliation (procqueue/search/reconcile.py) of each entity
-- goes on: the last key it checked (NULL: start of a new pass), and when the
-- current pass began and the last one ended.
CREATE TABLE procqueue.reconcile_cursors (
    entity text PRIMARY KEY,
    after_key text,
    pass_started_at timestamptz NOT NULL DEFAULT now(),
    last_pass_ended_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON procqueue.reconcile_cursors FROM PUBLIC;
