"""The engine: how procqueue runs Procrastinate. The App and the services its jobs
share, the worker (made to outlive its database and to explain every failure), its
start checks, schema-qualified queries and every Postgres connection procqueue opens.
It knows no feature; docs/procrastinate.md says where it reaches into Procrastinate."""
