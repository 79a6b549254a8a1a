"""The feature slices, in the order their triggers are attached and their tasks
registered: `app.py` and `migrate.py` loop over `features()`. And the one settings
object they make up: `Settings`, the core's section with every feature's (and the
dashboard's), read by `load_settings`. Add a slice here: to `features()`, and its
section (`feature.settings`) to Settings' bases.

The slices' code (tasks, triggers, clients) is imported on the first `features()`,
not with this module: a command that only needs the settings (`procqueue reindex`,
`health`) starts without it."""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from typing import Any

from dotenv import dotenv_values

from procqueue.dashboard.settings import DashboardSettings
from procqueue.feature import Feature
from procqueue.images.settings import ImageSettings
from procqueue.notifications.settings import NotificationSettings
from procqueue.search.settings import SearchSettings
from procqueue.settings import CoreSettings, load_section, unknown_variables

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def features() -> tuple[Feature, ...]:
    """Every feature slice, in order: search, images, notifications."""
    from procqueue.images.feature import FEATURE as IMAGES
    from procqueue.notifications.feature import FEATURE as NOTIFICATIONS
    from procqueue.search.feature import FEATURE as SEARCH

    return (SEARCH, IMAGES, NOTIFICATIONS)


class Settings(
    DashboardSettings, NotificationSettings, ImageSettings, SearchSettings, CoreSettings
):
    """Every setting: the core's section and each feature's, one object from one
    reading of the environment. Each part gets its own section (the core takes
    CoreSettings, a feature `settings.section(<its section>)`); tests check that the
    bases are every feature's section (tests/test_settings.py). The core comes last:
    pydantic checks the last base's fields first, so a missing DATABASE_URL is the
    error reported, whatever else is wrong."""


def load_settings(**overrides: Any) -> Settings:
    """Read the settings; raise ConfigError with one clear line if they are wrong."""
    return load_section(Settings, **overrides)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()


@lru_cache(maxsize=1)
def warn_unknown_variables() -> None:
    """Warn, once per process, of each PROCQUEUE_* variable of the environment or
    `.env` that no setting reads (PROCQUEUE_CONCURENCY), naming the closest setting."""
    environ = {**dotenv_values(".env"), **os.environ}
    for line in unknown_variables(Settings, environ):
        logger.warning("%s", line)
