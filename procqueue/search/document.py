"""A search document is the entity's document columns of the current row,
as JSON values. The same function serves the worker and the drift checks."""

from __future__ import annotations

import datetime
import decimal
import uuid
from collections.abc import Mapping
from typing import Any

from procqueue.entities import Entity


def json_value(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    return value


def document_from_row(entity: Entity, row: Mapping[str, Any]) -> dict[str, Any]:
    return {column: json_value(row[column]) for column in entity.fields}
