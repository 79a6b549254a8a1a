"""What the CLI prints: plain-text tables for people, JSON for scripts (`--json`),
and refusals on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def print_json(value: Any) -> None:
    """`value` as the command's whole stdout: one JSON document (`--json`)."""
    print(json.dumps(value, default=str, indent=2))


def refuse(message: str) -> None:
    """A request the command could not do, as one line on stderr (the caller exits 1)."""
    print(f"procqueue: {message}", file=sys.stderr)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value != int(value) else f"{value:.0f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart, a dashed line under the headers."""
    cells = [[cell(value) for value in row] for row in rows]
    widths = [
        max([len(header)] + [len(row[i]) for row in cells]) for i, header in enumerate(headers)
    ]
    lines = ["  ".join(header.ljust(width) for header, width in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * width for width in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    if not cells:
        lines.append("(none)")
    return "\n".join(line.rstrip() for line in lines)
