"""The queue dashboard: a server-rendered web page for admins (docs/dashboard.md)."""
