"""docker-compose.yml cannot run here (no Docker engine): check that every
command and environment variable it gives our image exists in the code."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import yaml

from tests.support.deploy import load_settings_from, parse_command, unknown_variables
from tests.support.repo import REPO_DIR

COMPOSE = yaml.safe_load((REPO_DIR / "docker-compose.yml").read_text())
OUR_SERVICES = {name: spec for name, spec in COMPOSE["services"].items() if "build" in spec}


def test_compose_has_the_production_like_services() -> None:
    services = COMPOSE["services"]
    assert services["db"]["image"].startswith("supabase/postgres:15")
    assert services["elasticsearch"]["image"].split(":")[-1].startswith("8.")
    assert services["elasticsearch"]["environment"]["discovery.type"] == "single-node"
    assert {"migrate", "worker"} <= set(OUR_SERVICES)
    assert services["migrate"]["restart"] == "no"
    assert services["worker"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )


@pytest.mark.parametrize("name", sorted(OUR_SERVICES))
def test_every_command_exists(name: str) -> None:
    command: list[str] = OUR_SERVICES[name]["command"]
    if command[0] == "procqueue":
        parse_command(command)  # exits (fails the test) on an unknown command
    else:
        assert command[0] == "procrastinate"
        app_path = next(arg.split("=", 1)[1] for arg in command if arg.startswith("--app="))
        module, attribute = app_path.rsplit(".", 1)
        assert hasattr(importlib.import_module(module), "__getattr__") or hasattr(
            importlib.import_module(module), attribute
        )


@pytest.mark.parametrize("name", sorted(OUR_SERVICES))
def test_every_environment_variable_is_a_setting(name: str) -> None:
    environment: dict[str, Any] = OUR_SERVICES[name]["environment"]
    unknown = unknown_variables(set(environment))
    assert not unknown, f"{name} sets variables no setting reads: {unknown}"


def test_compose_settings_validate() -> None:
    environment = OUR_SERVICES["worker"]["environment"]
    values = {key: str(value).replace("${POSTGRES_PASSWORD:-change-me}", "pw")
              for key, value in environment.items()}  # fmt: skip
    settings = load_settings_from(values)
    assert settings.elasticsearch_url == "http://elasticsearch:9200"
    assert settings.use_listen_notify


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) of each Dockerfile line, continuation lines joined."""
    text = (REPO_DIR / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_image_installs_a_wheel_not_the_checkout() -> None:
    """The image is what a user gets from `pip install procqueue-*.whl`: a wheel
    built in a build stage, installed without `-e`, so it runs on the SQL the wheel carries."""
    instructions = dockerfile_instructions()
    runs = [arguments for instruction, arguments in instructions if instruction == "RUN"]
    installs = [run for run in runs if "pip install" in run]
    assert installs, "the Dockerfile installs nothing"
    for run in installs:
        words = run.split()
        assert "-e" not in words and "--editable" not in words, run
        assert ".whl" in run, f"installs something else than the built wheel: {run}"
    assert any("pip wheel" in run for run in runs)
    assert any("postgresql-client" in run for run in runs)  # psql, for --from-scratch
    stages = [i for i, (instruction, _) in enumerate(instructions) if instruction == "FROM"]
    assert len(stages) == 2 and instructions[stages[0]][1].endswith(" AS build"), instructions
    # The final stage copies only the wheel from the build stage, not the checkout.
    final_copies = [arguments for instruction, arguments in instructions[stages[-1] :]
                    if instruction == "COPY"]  # fmt: skip
    assert final_copies and all(copy.startswith("--from=build ") for copy in final_copies)
