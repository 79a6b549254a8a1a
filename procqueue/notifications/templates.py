"""Message templates: one TOML file per notification type, a table per locale.

    procqueue/notifications/templates/listing_approved.toml
        [tr]  subject, text, html (email); title, body (push)
        [en]  the same in English

`$name` (or `${name}`) is replaced by the notification's data["name"]; a key
the data lacks renders empty; `$$` is a dollar sign. Values are HTML-escaped in
the `html` part. A type without a file uses `_default.toml`. Files in
PROCQUEUE_NOTIFICATION_TEMPLATES_DIR win over the built-in ones.
"""

from __future__ import annotations

import html
import json
import re
import string
import tomllib
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from procqueue.errors import ConfigError
from procqueue.notifications.model import Message

BUILTIN_DIR = Path(__file__).resolve().parent / "templates"
DEFAULT_TEMPLATE = "_default"
LOCALES = ("tr", "en")
_TYPE_NAME = re.compile(r"^[A-Za-z0-9_]{1,100}$")


class _Values(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


def normalize_locale(value: str | None, default: str) -> str:
    """'en-US', 'EN_gb' -> 'en'; anything unsupported -> the default."""
    language = re.split(r"[-_]", (value or "").strip().lower(), maxsplit=1)[0]
    return language if language in LOCALES else default


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


@cache
def _load(path: Path) -> dict[str, dict[str, str]]:
    try:
        parsed = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"notification template {path} cannot be read: {error}") from None
    tables = {locale: parts for locale, parts in parsed.items() if isinstance(parts, dict)}
    if not tables:
        raise ConfigError(f"notification template {path} has no [tr] or [en] table")
    return {
        locale: {key: str(value) for key, value in parts.items()}
        for locale, parts in tables.items()
    }


class Templates:
    """Finds and renders the template of a notification type."""

    def __init__(self, default_locale: str = "tr", directory: Path | None = None) -> None:
        self.default_locale = default_locale
        self.directories: Sequence[Path] = (
            (directory, BUILTIN_DIR) if directory is not None else (BUILTIN_DIR,)
        )

    def path(self, notification_type: str) -> Path:
        names = [DEFAULT_TEMPLATE]
        if _TYPE_NAME.match(notification_type or ""):
            names.insert(0, notification_type.lower())
        for name in names:
            for directory in self.directories:
                candidate = directory / f"{name}.toml"
                if candidate.is_file():
                    return candidate
        raise ConfigError(f"no notification template {DEFAULT_TEMPLATE}.toml in {self.directories}")

    def render(
        self, notification_type: str, locale: str | None, data: Mapping[str, Any]
    ) -> Message:
        tables = _load(self.path(notification_type))
        wanted = normalize_locale(locale, self.default_locale)
        chosen = next(name for name in (wanted, self.default_locale, *tables) if name in tables)
        values = _Values({key: _text(value) for key, value in data.items()})
        escaped = _Values({key: html.escape(value) for key, value in values.items()})
        try:
            parts = {
                part: string.Template(text).substitute(escaped if part == "html" else values)
                for part, text in tables[chosen].items()
            }
        except ValueError as error:
            raise ConfigError(
                f"notification template {self.path(notification_type)} [{chosen}] is "
                f"malformed: {error} (write $$ for a dollar sign)"
            ) from None
        parts = {part: text.strip() for part, text in parts.items()}
        return Message(type=notification_type, locale=chosen, parts=parts)
