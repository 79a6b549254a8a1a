"""The named SQL of the notifications feature (email and push):
queries.sql beside this file."""

from __future__ import annotations

from procqueue.queries import NamedQueries

QUERIES = NamedQueries(__package__)
query = QUERIES.query
query_with = QUERIES.query_with
