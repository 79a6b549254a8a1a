"""Cloudinary image cleanup: delivery URLs, the orphan check, the cleanup job
(procqueue/images/jobs.py) and its trigger."""

from __future__ import annotations

from procqueue.settings import SchemaConfig

#: How long a removed image waits before the orphan check and deletion (seconds).
DEFAULT_GRACE_SECONDS = SchemaConfig.image_cleanup_grace
