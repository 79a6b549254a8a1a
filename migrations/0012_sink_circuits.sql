-- The state of each outside service's circuit (procqueue/queue/circuit.py), as the
-- workers last saw it: written when a circuit opens or closes, read by health.
CREATE TABLE procqueue.sink_circuits (
    sink text PRIMARY KEY,
    is_open boolean NOT NULL,
    opened_at timestamptz,
    reason text NOT NULL DEFAULT '',
    updated_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON procqueue.sink_circuits FROM PUBLIC;
