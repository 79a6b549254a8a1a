"""Notifications by email and push: channel rules, templates, preferences and
delivery records. See docs/notifications.md."""

from procqueue.notifications.api import notify

__all__ = ["notify"]
