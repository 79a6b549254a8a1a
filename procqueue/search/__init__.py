"""Elasticsearch sync: row jobs and bulk jobs, the search document, the client,
reindex and verify."""
