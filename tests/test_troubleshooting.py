"""docs/troubleshooting.md quotes procqueue's own lines: each quoted line (`> …` as a
paragraph or a table cell) is found in the code, `…` standing for what varies, and
each `procqueue` command it gives parses with the real CLI."""

from __future__ import annotations

import re
import shlex
from functools import cache

import pytest

from tests.support.deploy import parse_command
from tests.support.repo import REPO_DIR

DOC = (REPO_DIR / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
VARIES = "…"

#: A string literal continued on the next line (implicit concatenation).
_CONTINUED = re.compile(r"\"\s*\n\s*[rfb]{0,2}\"")
#: A module or class constant bound to a string literal, or to another constant.
_CONSTANT = re.compile(
    r"^\s*(?P<name>[A-Z][A-Z0-9_]+)\s*(?::[^=\n]+)?=\s*(?:\"(?P<text>[^\"\n]*)\"|"
    r"(?:\w+\.)?(?P<alias>[A-Z][A-Z0-9_]+)\s*$)",
    re.MULTILINE,
)
_FIELD = re.compile(r"\{(?P<expr>[^{}]*)\}")
_PERCENT = re.compile(r"%[-+ #0-9.]*[sdfgr]")


@cache
def code_text() -> str:
    """procqueue's source with continued string literals joined, constants' values
    put in place of `{NAME}` and every other interpolation turned into `…`."""
    sources = [path.read_text(encoding="utf-8") for path in (REPO_DIR / "procqueue").rglob("*.py")]
    constants: dict[str, str] = {}
    aliases: dict[str, str] = {}
    for source in sources:
        for match in _CONSTANT.finditer(source):
            if match["text"] is not None:
                constants[match["name"]] = match["text"]
            else:
                aliases[match["name"]] = match["alias"]
    for name, target in aliases.items():
        if target in constants:
            constants.setdefault(name, constants[target])

    def field(match: re.Match[str]) -> str:
        return constants.get(match["expr"].strip(), VARIES)

    text = _CONTINUED.sub("", "\n".join(sources))
    return _PERCENT.sub(VARIES, _FIELD.sub(field, text))


def quoted_lines() -> list[str]:
    quotes = []
    for line in DOC.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        for cell in cells if line.startswith("|") else [line.strip()]:
            if cell.startswith("> "):
                quotes.append(cell[2:].strip())
    return quotes


def pieces(quote: str) -> list[str]:
    """The fixed parts of a quoted line, cut at what varies and at `: ` and `; `."""
    parts = re.split(rf"{VARIES}|: |; ", quote)
    return [part.strip(" ;:,.'") for part in parts if len(part.strip(" ;:,.'")) >= 8]


QUOTES = quoted_lines()


def test_the_doc_quotes_lines() -> None:
    assert len(QUOTES) >= 12


@pytest.mark.parametrize("quote", QUOTES)
def test_each_quoted_line_is_the_codes(quote: str) -> None:
    missing = [piece for piece in pieces(quote) if piece not in code_text()]
    assert pieces(quote) and not missing, missing


def commands() -> list[str]:
    """Every `procqueue …` the doc gives to run (in backticks or a code block)."""
    found = re.findall(r"`(procqueue [^`" + VARIES + r"]*)`", DOC)
    for block in re.findall(r"```bash\n(.*?)```", DOC, re.DOTALL):
        found += [line.split("#")[0].strip() for line in block.splitlines()]
    return sorted({command for command in found if command.startswith("procqueue ")})


@pytest.mark.parametrize("command", commands())
def test_each_command_is_a_real_one(command: str) -> None:
    parse_command(shlex.split(command))
