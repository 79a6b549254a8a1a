"""A search document is the entity's document columns of the current row, made
into JSON by Postgres (queries.sql: entity_document_columns), so that every value
Postgres accepts reaches Python as JSON it can hold. Each field follows the rule
of its search type (docs/bulk.md, "What a document holds"):

- `date`: an ISO date or time with a four-digit year, else null ('infinity',
  '-infinity', BC dates, year 10000 on);
- `double`, `long`, `integer`: null for NaN, an infinity, or a number outside the
  type's range; a `double` is the double Elasticsearch stores (12.50 -> 12.5);
- every other type: the column's JSON as it is.

Bounds (docs/bulk.md), applied in SQL before anything is sent: an array field
(a Postgres array, or a json/jsonb array) holds the column's first
`max_array_length` elements (the cut is logged with the row and the column); a row
whose document is over the entity's `max_document_bytes` has no document: its sync
fails with that reason. The same functions serve the worker and the drift checks.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from typing import Any

from psycopg import sql

from procqueue.entities import NUMBER_RANGES, Entity
from procqueue.errors import PermanentError
from procqueue.search.queries import query_with

logger = logging.getLogger(__name__)

#: The columns an entity read returns beside the key (queries.sql: entity_document_columns).
DOCUMENT_COLUMN = "procqueue_document"
TEXT_BYTES_COLUMN = "procqueue_text_bytes"
#: The fields cut to max_array_length, as "column:elements" (None: none was).
TRIMMED_COLUMN = "procqueue_trimmed"


class Unindexable(PermanentError):
    """A row that cannot have a search document; `status` is what
    procqueue.sync_item_errors records for it (413: too large, 422: unreadable)."""

    status = 422


class DocumentTooLarge(Unindexable):
    """A row whose search document is over its entity's limit."""

    status = 413

    def __init__(self, entity: Entity, entity_id: str, size: int, *, built: bool) -> None:
        measured = f"{size} bytes" if built else f"about {size} bytes of column text"
        super().__init__(
            f"{entity.name} {entity_id}: its search document ({measured}) is over the limit "
            f"of {entity.max_document_bytes} bytes (max_document_bytes); shorten the row, or "
            "raise the limit in the entities file"
        )
        self.size = size


def _bounded(entity: Entity, column: str) -> sql.Composed:
    """The column's value as a document holds it: an array's first max_array_length
    elements, any other value as it is (migrations/0019_search_array_bound.sql)."""
    return sql.SQL("procqueue.search_head(t.{}, {})").format(
        sql.Identifier(column), sql.Literal(entity.max_array_length)
    )


def _field_value(entity: Entity, column: str) -> sql.Composable:
    kind = entity.fields[column]
    value = sql.SQL("to_json({})").format(_bounded(entity, column))
    if kind == "date":
        rule = "search_value_date"
        extra: dict[str, sql.Composable] = {}
    elif kind in NUMBER_RANGES:
        rule = "search_value_number"
        low, high = NUMBER_RANGES[kind]
        extra = {"low": sql.SQL(low), "high": sql.SQL(high)}
    else:
        return _bounded(entity, column)

    def rule_on(json_value: sql.Composable) -> sql.Composed:
        if rule != "search_value_number":
            return query_with(rule, value=json_value)
        number: sql.Composable = json_value
        if kind == "double":
            numeric = sql.SQL("({}::text)::numeric").format(json_value)
            number = query_with("search_value_double", number=numeric)
        return query_with(rule, value=json_value, number=number, **extra)

    return query_with(
        "search_value", value=value, scalar=rule_on(value), element=rule_on(sql.SQL("e.value"))
    )


def document_columns(entity: Entity) -> sql.Composed:
    """The select list of an entity read query over `{table} AS t` (queries.sql)."""
    fields = sql.SQL(", ").join(
        sql.SQL("{} AS {}").format(_field_value(entity, column), sql.Identifier(column))
        for column in entity.fields
    )
    text_bytes = sql.SQL(" + ").join(
        query_with("column_text_bytes", column=_bounded(entity, column)) for column in entity.fields
    )
    trimmed = sql.SQL(", ").join(
        query_with(
            "search_trimmed",
            column=sql.SQL("t.{}").format(sql.Identifier(column)),
            column_name=sql.Literal(column),
            max_array_length=sql.Literal(entity.max_array_length),
        )
        for column in entity.fields
    )
    return query_with(
        "entity_document_columns",
        primary_key=entity.primary_key,
        fields=fields,
        text_bytes=text_bytes,
        limit=sql.Literal(entity.max_document_bytes),
        trimmed=trimmed,
    )


def _float(text: str) -> float | str:
    # Only a number too large for a double in a field that is not a number
    # (those are nulled in SQL) gets here as an infinity: keep its digits.
    value = float(text)
    return value if math.isfinite(value) else text


def document_size(row: Mapping[str, Any]) -> int:
    """The size in bytes of the row's document (when it was not built: about the
    size of its columns' text, which it would exceed)."""
    text: str | None = row[DOCUMENT_COLUMN]
    return int(row[TEXT_BYTES_COLUMN]) if text is None else len(text.encode())


def _too_large(entity: Entity, text: str | None, row: Mapping[str, Any]) -> bool:
    if text is None:
        return True
    if len(text) * 4 <= entity.max_document_bytes:  # UTF-8: at most 4 bytes a character
        return False
    return document_size(row) > entity.max_document_bytes


def trimmed_fields(row: Mapping[str, Any]) -> dict[str, int]:
    """The fields of the row's document cut to max_array_length: column -> the
    number of elements the column holds."""
    found: dict[str, int] = {}
    for note in row.get(TRIMMED_COLUMN) or ():
        column, _, elements = str(note).rpartition(":")
        found[column] = int(elements)
    return found


def _log_trimmed(entity: Entity, row: Mapping[str, Any]) -> None:
    for column, elements in trimmed_fields(row).items():
        logger.warning(
            "%s %s: %s holds %d elements: the first %d are indexed (max_array_length in "
            "the entities file)", entity.name, row[entity.primary_key], column, elements,
            entity.max_array_length,
        )  # fmt: skip


def _checked_text(entity: Entity, row: Mapping[str, Any]) -> str:
    """The row's document text, once it is known to be within the limit
    (DocumentTooLarge otherwise) and its cut arrays are logged."""
    text: str | None = row[DOCUMENT_COLUMN]
    if _too_large(entity, text, row):
        entity_id = str(row[entity.primary_key])
        raise DocumentTooLarge(entity, entity_id, document_size(row), built=text is not None)
    assert text is not None
    _log_trimmed(entity, row)
    return text


def document_from_row(entity: Entity, row: Mapping[str, Any]) -> dict[str, Any]:
    """The row's search document; DocumentTooLarge when it is over the limit."""
    return _parsed(entity, row, _checked_text(entity, row))


def _parsed(entity: Entity, row: Mapping[str, Any], text: str) -> dict[str, Any]:
    try:
        document: dict[str, Any] = json.loads(text, parse_float=_float)
    except RecursionError:  # a json column nested thousands deep
        raise Unindexable(
            f"{entity.name} {row[entity.primary_key]}: a value is nested too deeply for a "
            "search document"
        ) from None
    return document


#: Text Python must read before it is sent (document_json), as Python's reading
#: changes what goes out: a line break (a `json` column keeps its own; a `_bulk` body
#: is one line per document); a number with an exponent or many digits, which
#: may not fit a double (1e400, 1000...0e60: parse_float keeps its digits; 1e-400
#: reads as 0; a JSON number follows ":", ",", "[" or a space, never a quote as a
#: key's text does, so a uuid's "123e456" is none); a number Python writes
#: otherwise (12.50 as 12.5, seventeen digits or more rounded to a double: the text
#: a `keyword` field indexes); a surrogate escape ("\ud800", which a `json` column
#: takes). A nested
#: object (more than one "{": a `json` column may repeat a key, which Elasticsearch
#: refuses and Python resolves to the last) and deep arrays (many "[": Python's
#: parser stops at about a thousand levels) are read too.
#: One regular expression with all of it took 19 µs for a 400-character document (a
#: tenth of a reindex's time): the numbers are found with one plain pattern and their
#: text checked in Python, the rest with `in` (6 µs). A digit run outside a number is
#: inside a string, which goes out as it is, so only numbers are looked at.
_NUMBER = re.compile(r"[:,\[\s]-?[0-9][0-9.eE]*")
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
_ARRAYS_READ_FIRST = 100


def _must_read(text: str) -> bool:
    """Whether Python must read `text` before it is sent (the cases above)."""
    if text.count("{") != 1 or text.count("[") >= _ARRAYS_READ_FIRST:
        return True
    if "\n" in text or "\r" in text or ("\\u" in text and _SURROGATE.search(text)):
        return True
    for found in _NUMBER.findall(text):
        number = found[1:].lstrip("-")  # after its ":", ",", "[" or space
        if "e" in number or "E" in number or len(number) >= 17:
            return True
        if "." in number and number.endswith("0"):
            return True
    return False


def document_json(entity: Entity, row: Mapping[str, Any]) -> str:
    """The row's search document as the JSON text a `_bulk` sends: the text
    Postgres made, as it is, when nothing in it needs reading (a row of plain
    columns: no parse and no dump per row), otherwise document_from_row's document
    written out again. The same errors as document_from_row."""
    text = _checked_text(entity, row)
    if not _must_read(text):
        return text
    return json.dumps(_parsed(entity, row, text), ensure_ascii=False)
