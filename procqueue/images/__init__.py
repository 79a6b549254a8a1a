"""Cloudinary image cleanup: delivery URLs, the orphan check, and the constants
the database side (trigger, migrate) shares with the worker side."""

from __future__ import annotations

from procqueue.settings import SchemaConfig

#: The task the image trigger enqueues, and the queue it goes to.
CLEANUP_TASK = "images:cleanup"
IMAGES_QUEUE = "images"

#: How long a removed image waits before the orphan check and deletion (seconds).
DEFAULT_GRACE_SECONDS = SchemaConfig.image_cleanup_grace
