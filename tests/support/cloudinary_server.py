"""The loopback Cloudinary Admin API the tests delete images from (the stand-in itself
lives in procqueue/loopback/cloudinary.py, which the demo runs too), and the fixtures
(a pytest plugin, see tests/conftest.py) of the tests that delete images."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from procqueue.loopback.cloudinary import (
    DROP,
    Call,
    CloudinaryServer,
    cloudinary_server,
    error,
    rate_limited,
)
from procqueue.loopback.http import Reply
from procqueue.migrate import migrate
from procqueue.settings import SchemaConfig

__all__ = [
    "DROP",
    "Call",
    "CloudinaryServer",
    "Reply",
    "cloud",
    "cloudinary_server",
    "dsn",
    "error",
    "rate_limited",
]


@pytest.fixture(scope="module")
def cloud() -> Iterator[CloudinaryServer]:
    """The module's loopback Cloudinary Admin API."""
    with cloudinary_server() as server:
        yield server


@pytest.fixture(scope="module")
def dsn(database: str, db: Any) -> str:
    """The module's database, its image triggers re-attached with no grace period
    (and SELLER_ID as a user, through `db`)."""
    migrate(database, SchemaConfig(image_cleanup_grace=0))
    return database
