"""The README documents every setting and its two quick-start commands exist."""

from __future__ import annotations

import os

import pytest

from procqueue.features import Settings
from tests.support.repo import REPO_DIR

README = (REPO_DIR / "README.md").read_text(encoding="utf-8")


def env_name(field_name: str) -> str:
    alias = Settings.model_fields[field_name].validation_alias
    choices = getattr(alias, "choices", None)
    return str(choices[0]) if choices else f"PROCQUEUE_{field_name.upper()}"


@pytest.mark.parametrize("field_name", sorted(Settings.model_fields))
def test_every_setting_is_in_the_configuration_table(field_name: str) -> None:
    assert f"`{env_name(field_name)}`" in README


@pytest.mark.parametrize("script", ["scripts/demo", "scripts/test"])
def test_quick_start_commands_exist(script: str) -> None:
    assert f"./{script}" in README
    assert os.access(REPO_DIR / script, os.X_OK)


def test_ci_runs_the_readme_test_command() -> None:
    assert "./scripts/test" in (REPO_DIR / ".ci" / "run").read_text()
