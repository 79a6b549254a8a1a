"""Entity descriptions: which table is which entity, its key, the columns of its
search document and the columns whose changes alone need no sync.

The defaults describe the marketplace schema of examples/sample_schema.sql (the
`inventory_items` and `listings` tables). Another schema is a
TOML file named by PROCQUEUE_ENTITIES_FILE (see examples/entities.toml), never code.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procqueue.errors import ConfigError

#: Search field types an entity may use, and the Elasticsearch mapping of each.
FIELD_MAPPINGS: dict[str, dict[str, Any]] = {
    "keyword": {"type": "keyword"},
    "text": {"type": "text", "fields": {"raw": {"type": "keyword", "ignore_above": 256}}},
    "long": {"type": "long"},
    "integer": {"type": "integer"},
    "double": {"type": "double"},
    "boolean": {"type": "boolean"},
    "date": {"type": "date"},
    "url": {"type": "keyword", "index": False},
}

#: Field types whose values are numbers, with the range Elasticsearch stores for
#: each; a value outside it (or NaN, or an infinity) is indexed as null.
NUMBER_RANGES: dict[str, tuple[str, str]] = {
    "long": ("-9223372036854775808", "9223372036854775807"),
    "integer": ("-2147483648", "2147483647"),
    "double": ("-1.7976931348623157e308", "1.7976931348623157e308"),
}

#: A row whose search document is larger fails its own sync with that reason
#: (docs/bulk.md); `max_document_bytes` in the entities file changes it.
DEFAULT_MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
#: Elasticsearch's default http.max_content_length: no document can be larger.
LARGEST_DOCUMENT_BYTES = 100 * 1024 * 1024
#: An array field (a Postgres array, or a json/jsonb array) of a search document holds
#: at most this many elements: its first ones (docs/bulk.md); `max_array_length` in the
#: entities file changes it. An indexer's cost grows with the number of values: the
#: ES-API emulator took 14 s for one document of 50,000 image URLs, 0.01 s for 1,000.
DEFAULT_MAX_ARRAY_LENGTH = 1000
#: The largest `max_array_length` an entity may set.
LARGEST_ARRAY_LENGTH = 1_000_000

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Entity:
    """One synced table."""

    name: str  # names its jobs (procqueue/search/jobs.py) and its sync key
    table: str  # schema-qualified: "public.listings"
    index: str  # Elasticsearch alias: "listings" -> listings_v1
    fields: Mapping[str, str]  # document column -> type in FIELD_MAPPINGS
    primary_key: str = "id"
    image_columns: tuple[str, ...] = ()
    ignored_columns: tuple[str, ...] = ()
    queue: str = "sync"
    max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES
    max_array_length: int = DEFAULT_MAX_ARRAY_LENGTH

    @property
    def schema_name(self) -> str:
        return self.table.split(".", 1)[0]

    @property
    def table_name(self) -> str:
        return self.table.split(".", 1)[1]

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the queue reads or watches, for existence checks."""
        names = [self.primary_key, *self.fields, *self.image_columns, *self.ignored_columns]
        return tuple(dict.fromkeys(names))

    def mappings(self) -> dict[str, Any]:
        properties = {column: FIELD_MAPPINGS[kind] for column, kind in self.fields.items()}
        return {"dynamic": "strict", "properties": properties}

    def validate(self) -> None:
        """ConfigError for a value no entity may have (the caller says which entity)."""
        if not _NAME.match(self.name):
            raise ConfigError("name must be lower-case letters, digits and _")
        if not re.match(r"^[A-Za-z_][\w]*\.[A-Za-z_][\w]*$", self.table):
            raise ConfigError("table must be schema-qualified, like public.listings")
        if not re.match(r"^[a-z0-9][a-z0-9_\-]*$", self.index):
            raise ConfigError(f"index {self.index!r} is not a valid index name")
        unknown = sorted(set(self.fields.values()) - FIELD_MAPPINGS.keys())
        if unknown:
            raise ConfigError(
                f"unknown field type(s) {unknown}; use one of {sorted(FIELD_MAPPINGS)}"
            )
        if not _whole_between(self.max_document_bytes, 1, LARGEST_DOCUMENT_BYTES):
            raise ConfigError(
                f"max_document_bytes must be between 1 and {LARGEST_DOCUMENT_BYTES} "
                "(Elasticsearch's default request limit)"
            )
        if not _whole_between(self.max_array_length, 1, LARGEST_ARRAY_LENGTH):
            raise ConfigError(
                f"max_array_length must be between 1 and {LARGEST_ARRAY_LENGTH} "
                "(elements of one array field of a document)"
            )
        both = sorted(set(self.fields) & set(self.ignored_columns))
        if both:
            raise ConfigError(
                f"{both} are both document fields and ignored columns; a document "
                "field must be synced when it changes, so remove it from one list"
            )


def _whole_between(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


INVENTORY = Entity(
    name="inventory",
    table="public.inventory_items",
    index="inventory_items",
    fields={
        "id": "keyword",
        "user_id": "keyword",
        "name": "text",
        "category": "keyword",
        "description": "text",
        "condition": "keyword",
        "estimated_value": "double",
        "main_image_url": "url",
        "additional_image_urls": "url",
        "created_at": "date",
    },
    image_columns=("main_image_url", "additional_image_urls"),
    ignored_columns=("updated_at",),
)

LISTING = Entity(
    name="listing",
    table="public.listings",
    index="listings",
    fields={
        "id": "keyword",
        "user_id": "keyword",
        "title": "text",
        "description": "text",
        "category": "keyword",
        "budget": "double",
        "location": "text",
        "status": "keyword",
        "main_image_url": "url",
        "additional_image_urls": "url",
        "inventory_item_id": "keyword",
        "created_at": "date",
    },
    image_columns=("main_image_url", "additional_image_urls"),
    ignored_columns=("view_count", "updated_at"),
)

DEFAULT_ENTITIES: tuple[Entity, ...] = (INVENTORY, LISTING)


#: Each key an [[entity]] may have: the Python type of its value, and how to write it.
ENTITY_KEYS: dict[str, tuple[type, str]] = {
    "name": (str, 'a string, like name = "listing"'),
    "table": (str, 'a schema-qualified table name, like table = "public.listings"'),
    "index": (str, 'a string, like index = "listings"'),
    "fields": (dict, 'a table of column = "type": a line [entity.fields], then id = "keyword"'),
    "primary_key": (str, 'a column name, like primary_key = "id"'),
    "image_columns": (list, 'a list of column names, like image_columns = ["main_image_url"]'),
    "ignored_columns": (list, 'a list of column names, like ignored_columns = ["updated_at"]'),
    "queue": (str, 'a queue name, like queue = "sync"'),
    "max_document_bytes": (int, "a whole number of bytes, like max_document_bytes = 4194304"),
    "max_array_length": (int, "a whole number of elements, like max_array_length = 1000"),
}
REQUIRED_KEYS = ("name", "table", "index", "fields")


def _unknown_key(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"the keys are {', '.join(known)}"
    return f"unknown key {key!r}: {hint}"


def _checked(raw: Mapping[str, Any], key: str) -> Any:
    """The value of `key`, or ConfigError saying how to write it."""
    kind, how = ENTITY_KEYS[key]
    value = raw[key]
    wrong = isinstance(value, bool) or not isinstance(value, kind)
    if isinstance(value, list) and not wrong:
        wrong = not all(isinstance(item, str) for item in value)
    if wrong:
        raise ConfigError(f"{key} must be {how}")
    if key == "fields":
        for column, field_type in value.items():
            if not isinstance(field_type, str):
                raise ConfigError(
                    f'fields.{column} must be a type name, like {column} = "keyword" '
                    f"(one of {', '.join(FIELD_MAPPINGS)})"
                )
    return value


def entity_from_mapping(raw: Mapping[str, Any]) -> Entity:
    """The entity an [[entity]] table describes; ConfigError (without the entity's
    name: `load_entities` adds where) for a key that is unknown, missing or of the
    wrong type, or a value `Entity.validate` refuses."""
    for key in raw:
        if key not in ENTITY_KEYS:
            raise ConfigError(_unknown_key(key, list(ENTITY_KEYS)))
    missing = [key for key in REQUIRED_KEYS if key not in raw]
    if missing:
        raise ConfigError(f"missing the key {missing[0]!r}: add {ENTITY_KEYS[missing[0]][1]}")
    values = {key: _checked(raw, key) for key in raw}
    entity = Entity(
        name=values["name"],
        table=values["table"],
        index=values["index"],
        fields=dict(values["fields"]),
        primary_key=values.get("primary_key", "id"),
        image_columns=tuple(values.get("image_columns", ())),
        ignored_columns=tuple(values.get("ignored_columns", ())),
        queue=values.get("queue", "sync"),
        max_document_bytes=values.get("max_document_bytes", DEFAULT_MAX_DOCUMENT_BYTES),
        max_array_length=values.get("max_array_length", DEFAULT_MAX_ARRAY_LENGTH),
    )
    entity.validate()
    return entity


def _described(number: int, raw: Any) -> str:
    """How an error names the [[entity]] it is about: its name, else its table."""
    name = raw.get("name") if isinstance(raw, Mapping) else None
    if isinstance(name, str):
        return f"entity {name!r}"
    table = raw.get("table") if isinstance(raw, Mapping) else None
    return f"entity #{number}" + (f" (table {table})" if isinstance(table, str) else "")


def load_entities(path: Path | None) -> tuple[Entity, ...]:
    """The default entities, or those described in a TOML file."""
    if path is None:
        return DEFAULT_ENTITIES
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read entities file {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"entities file {path} is not UTF-8 text (byte {error.object[error.start]:#04x} at "
            f"position {error.start}): save it as UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"entities file {path} is not valid TOML: {error}") from None
    where = f"entities file {path}"
    for key in raw:
        if key != "entity":
            raise ConfigError(f"{where}: {_unknown_key(key, ['entity'])}")
    items = raw.get("entity", [])
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ConfigError(
            f"{where}: entity must be an array of tables: write each one as [[entity]] "
            "followed by its keys (see examples/entities.toml)"
        )
    entities = []
    for number, item in enumerate(items, start=1):
        try:
            entities.append(entity_from_mapping(item))
        except ConfigError as error:
            raise ConfigError(f"{where}: {_described(number, item)}: {error}") from None
    if not entities:
        raise ConfigError(f"{where} describes no [[entity]]")
    _check_unique(entities)
    return tuple(entities)


def _check_unique(entities: Sequence[Entity]) -> None:
    for attribute in ("name", "table", "index"):
        values = [getattr(entity, attribute) for entity in entities]
        duplicates = sorted({value for value in values if values.count(value) > 1})
        if duplicates:
            raise ConfigError(f"two entities share the {attribute} {duplicates[0]!r}")


@dataclass(frozen=True)
class EntityRegistry:
    """The configured entities, looked up by name."""

    entities: tuple[Entity, ...] = field(default=DEFAULT_ENTITIES)

    def get(self, name: str) -> Entity:
        for entity in self.entities:
            if entity.name == name:
                return entity
        known = ", ".join(entity.name for entity in self.entities)
        raise ConfigError(f"unknown entity {name!r}; configured entities: {known}")

    def by_table_or_name(self, key: str) -> Entity:
        for entity in self.entities:
            if key in (entity.name, entity.table, entity.table_name, entity.index):
                return entity
        return self.get(key)
