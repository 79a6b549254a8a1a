"""procqueue: row changes in Postgres become Procrastinate jobs that keep
Elasticsearch, Cloudinary and notifications in step."""

__version__ = "0.1.0"
