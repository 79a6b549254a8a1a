"""The named SQL of the search feature (Elasticsearch sync, reindex, verify, reconciliation):
queries.sql beside this file."""

from __future__ import annotations

from procqueue.queries import NamedQueries

QUERIES = NamedQueries(__package__)
query = QUERIES.query
query_with = QUERIES.query_with
