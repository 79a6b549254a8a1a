"""Checks of the deploy files (docker-compose.yml, deploy/systemd, deploy/kubernetes,
deploy/prometheus, deploy/grafana) against the code: the commands they run exist in
the real CLI, the variables they set are settings, their values load as settings, and
the series they read are ones procqueue exports."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families
from pydantic import AliasChoices
from pydantic.fields import FieldInfo

from procqueue.cli import build_parser
from procqueue.features import Settings
from tests.support.repo import REPO_DIR

#: Where the deploy examples install the `procqueue` command.
INSTALLED_COMMAND = "procqueue"


def settings_env_names() -> set[str]:
    """Every environment variable a setting reads (PROCQUEUE_<NAME> and the aliases)."""
    names = set()
    for field_name, field in Settings.model_fields.items():
        names.add(f"PROCQUEUE_{field_name.upper()}")
        alias = field.validation_alias
        names.update(getattr(alias, "choices", []) if alias else [])
    return {str(name) for name in names}


def env_name(field_name: str, field: FieldInfo) -> str:
    """The variable a deploy file sets for a setting: its first alias, else PROCQUEUE_<NAME>."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"PROCQUEUE_{field_name.upper()}"


def unknown_variables(names: set[str]) -> list[str]:
    """Those of `names` no setting reads."""
    return sorted(names - settings_env_names())


def load_settings_from(environment: Mapping[str, str]) -> Settings:
    """The settings `environment` (variable -> value, as a deploy file sets them) gives."""
    fields = {env_name(name, field): name for name, field in Settings.model_fields.items()}
    arguments: dict[str, Any] = {fields[key]: value for key, value in environment.items()}
    return Settings(**arguments)


def parse_command(argv: list[str]) -> argparse.Namespace:
    """`procqueue …` as the real CLI parses it (an unknown command or option exits,
    failing the test); the command may be a path to an installed `procqueue`."""
    assert Path(argv[0]).name == INSTALLED_COMMAND, argv
    return build_parser().parse_args(argv[1:])


def parse_exec(line: str, **specifiers: str) -> argparse.Namespace:
    """A systemd ExecStart= line, its `%x` specifiers replaced by `specifiers`."""
    for letter, value in specifiers.items():
        line = line.replace(f"%{letter}", value)
    assert "%" not in line, f"a specifier left in {line!r}"
    return parse_command(shlex.split(line))


Unit = dict[str, list[tuple[str, str]]]


def read_unit(path: Path) -> Unit:
    """A systemd unit file: section -> its (key, value) lines in order (a key may
    repeat, as Environment= does)."""
    unit: Unit = {}
    section: list[tuple[str, str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], [])
            continue
        assert section is not None, f"{path.name}: {line!r} outside a section"
        key, _, value = line.partition("=")
        section.append((key.strip(), value.strip()))
    return unit


def unit_values(unit: Unit, section: str, key: str) -> list[str]:
    return [value for name, value in unit.get(section, []) if name == key]


def read_env_file(path: Path) -> tuple[dict[str, str], set[str]]:
    """A systemd EnvironmentFile: (the variables it sets, the names of those it shows
    commented out as `# NAME=`)."""
    values: dict[str, str] = {}
    commented: set[str] = set()
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            name, equals, _ = line.lstrip("# ").partition("=")
            if equals and name.isupper() and name.replace("_", "").isalnum():
                commented.add(name)
            continue
        name, _, value = line.partition("=")
        values[name.strip()] = value.strip()
    return values, commented


ALERT_RULES = REPO_DIR / "deploy" / "prometheus" / "alerts.yml"
GRAFANA_DASHBOARD = REPO_DIR / "deploy" / "grafana" / "procqueue.json"
#: A procqueue series name in PromQL.
SERIES = re.compile(r"\bprocqueue_[a-z_]+")


def alert_expressions() -> dict[str, str]:
    """Alert name -> its PromQL, from deploy/prometheus/alerts.yml."""
    rules = yaml.safe_load(ALERT_RULES.read_text())
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def grafana_panels() -> list[dict[str, Any]]:
    dashboard: dict[str, Any] = json.loads(GRAFANA_DASHBOARD.read_text())
    panels: list[dict[str, Any]] = dashboard["panels"]
    return panels


def grafana_expressions() -> dict[str, str]:
    """ "<panel title> <refId>" -> its PromQL, from deploy/grafana/procqueue.json."""
    return {
        f"{panel['title']} {target['refId']}": target["expr"]
        for panel in grafana_panels()
        for target in panel.get("targets", [])
    }


def series_used() -> set[str]:
    """Every procqueue series the alert rules and the Grafana dashboard read."""
    expressions = [*alert_expressions().values(), *grafana_expressions().values()]
    return {name for expr in expressions for name in SERIES.findall(expr)}


#: The series a family of each type exposes besides its own name.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}


def exported_series(scrape: str) -> set[str]:
    """Every series name a Prometheus text scrape declares, with or without samples
    yet (a counter declares `_total`, a histogram `_bucket`, `_count`, `_sum`)."""
    names = set()
    for family in text_string_to_metric_families(scrape):
        names.add(family.name)
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names
