"""The entities file: every mistake is one line naming the file, the entity, the key
and what to write instead; `procqueue` prints it and exits 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from procqueue.entities import load_entities
from procqueue.errors import ConfigError

GOOD = '[[entity]]\nname = "listing"\ntable = "public.listings"\nindex = "listings"\n'
FIELDS = '[entity.fields]\nid = "keyword"\n'


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            f'{GOOD}fields = "id"\n',
            "entity 'listing': fields must be a table of column = \"type\"",
        ),
        ("entity = 5\n", "entity must be an array of tables: write each one as [[entity]]"),
        (
            f'{GOOD}image_columns = "main_image_url"\n{FIELDS}',
            "entity 'listing': image_columns must be a list of column names, like "
            'image_columns = ["main_image_url"]',
        ),
        (
            f'{GOOD}ignored_columns = ["view_count", 3]\n{FIELDS}',
            "entity 'listing': ignored_columns must be a list of column names",
        ),
        (
            f'{GOOD}primarykey = "id"\n{FIELDS}',
            "entity 'listing': unknown key 'primarykey': did you mean 'primary_key'?",
        ),
        (
            f"entitys = []\n{GOOD}{FIELDS}",
            "unknown key 'entitys': did you mean 'entity'?",
        ),
        (
            f'{GOOD}max_document_bytes = "4 MB"\n{FIELDS}',
            "entity 'listing': max_document_bytes must be a whole number of bytes",
        ),
        (
            f'[[entity]]\nname = 7\ntable = "public.listings"\nindex = "l"\n{FIELDS}',
            "entity #1 (table public.listings): name must be a string",
        ),
        (f"{GOOD}[entity.fields]\nid = 1\n", "entity 'listing': fields.id must be a type name"),
    ],
)
def test_each_mistake_is_one_line_naming_the_file_the_entity_and_the_fix(
    tmp_path: Path, body: str, expected: str
) -> None:
    config = tmp_path / "entities.toml"
    config.write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_entities(config)
    message = str(error.value)
    assert message.startswith(f"entities file {config}: "), message
    assert expected in message
    assert "\n" not in message


def test_a_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "entities.toml"
    config.write_bytes(GOOD.replace("listings", "ilanlar\xfd").encode("latin-1") + FIELDS.encode())
    with pytest.raises(ConfigError, match=r"is not UTF-8 text .*save it as UTF-8") as error:
        load_entities(config)
    assert str(error.value).startswith(f"entities file {config} ")


def test_the_cli_prints_the_line_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "entities.toml"
    config.write_text(f'{GOOD}image_columns = "main_image_url"\n{FIELDS}', encoding="utf-8")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PROCQUEUE_")}
    result = subprocess.run(
        [sys.executable, "-m", "procqueue.cli", "migrate", "--from-scratch",
         "--entities-file", str(config)],
        capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"procqueue: error: entities file {config}: entity 'listing': image_columns must be a "
        'list of column names, like image_columns = ["main_image_url"]'
    ]
