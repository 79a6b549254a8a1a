"""Queue health: SQL snapshots, Prometheus metrics, Sentry alerts, logs, maintenance."""
