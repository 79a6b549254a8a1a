"""The feature slices, in the order their triggers are attached and their tasks
registered: `app.py` and `migrate.py` loop over FEATURES. Add a slice here."""

from __future__ import annotations

from procqueue.feature import Feature
from procqueue.images.feature import FEATURE as IMAGES
from procqueue.notifications.feature import FEATURE as NOTIFICATIONS
from procqueue.search.feature import FEATURE as SEARCH

FEATURES: tuple[Feature, ...] = (SEARCH, IMAGES, NOTIFICATIONS)
