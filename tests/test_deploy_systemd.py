"""deploy/systemd: each unit parses, runs a real `procqueue` command, sets only
variables that are settings, and gives the worker the stop time and restarts it
needs; `systemd-analyze verify` checks them where it is installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from procqueue.commands.metrics import DEFAULT_PORT as METRICS_PORT
from tests.support.deploy import (
    load_settings_from,
    parse_exec,
    read_env_file,
    read_unit,
    unit_values,
    unknown_variables,
)
from tests.support.repo import REPO_DIR

SYSTEMD = REPO_DIR / "deploy" / "systemd"
ENV_FILE = SYSTEMD / "procqueue.env"
INSTALLED_ENV_FILE = "/etc/procqueue/procqueue.env"
#: Unit file -> the `procqueue` sub-command it runs.
UNITS = {
    "procqueue-worker@.service": "worker",
    "procqueue-dashboard.service": "dashboard",
    "procqueue-metrics.service": "metrics",
    "procqueue-migrate.service": "migrate",
}
#: A worker instance: its name is its metrics port.
INSTANCE = {"i": "9471", "H": "host1"}


def exec_start(name: str) -> str:
    [line] = unit_values(read_unit(SYSTEMD / name), "Service", "ExecStart")
    return line


def unit_environment(name: str) -> dict[str, str]:
    """The variables the unit itself sets (Environment=), specifiers replaced."""
    pairs = [
        value.replace("%i", INSTANCE["i"]).partition("=")
        for value in unit_values(read_unit(SYSTEMD / name), "Service", "Environment")
    ]
    return {key: value for key, _, value in pairs}


def test_the_directory_holds_the_units_and_the_environment_file() -> None:
    assert {path.name for path in SYSTEMD.iterdir()} == {*UNITS, ENV_FILE.name}


@pytest.mark.parametrize("name", sorted(UNITS))
def test_each_unit_runs_its_real_command_with_the_environment_file(name: str) -> None:
    unit = read_unit(SYSTEMD / name)
    assert set(unit) <= {"Unit", "Service", "Install"}
    args = parse_exec(exec_start(name), **INSTANCE)
    assert args.command == UNITS[name]
    assert unit_values(unit, "Service", "EnvironmentFile") == [INSTALLED_ENV_FILE]
    assert unit_values(unit, "Service", "User") == ["procqueue"]
    unknown = unknown_variables(set(unit_environment(name)))
    assert not unknown, f"{name} sets variables no setting reads: {unknown}"


def test_the_environment_file_sets_settings_that_load() -> None:
    values, commented = read_env_file(ENV_FILE)
    unknown = unknown_variables(set(values) | commented)
    assert not unknown, f"procqueue.env names variables no setting reads: {unknown}"
    # An EnvironmentFile overrides Environment=: it must not set what a unit sets.
    for name in UNITS:
        assert not set(values) & set(unit_environment(name)), name
    settings = load_settings_from({**values, **unit_environment("procqueue-worker@.service")})
    assert settings.metrics_port == int(INSTANCE["i"])
    assert 5 <= settings.concurrency <= 10
    assert settings.uses_transaction_pooler is False  # the worker LISTENs


def test_the_worker_restarts_on_failure_and_outlives_its_stop_timeout() -> None:
    name = "procqueue-worker@.service"
    unit = read_unit(SYSTEMD / name)
    values, _ = read_env_file(ENV_FILE)
    settings = load_settings_from(values)
    assert unit_values(unit, "Service", "Restart") == ["on-failure"]
    assert unit_values(unit, "Service", "KillSignal") == ["SIGTERM"]
    [stop] = unit_values(unit, "Service", "TimeoutStopSec")
    assert float(stop) > settings.shutdown_timeout + 5, (stop, settings.shutdown_timeout)
    assert parse_exec(exec_start(name), **INSTANCE).name == "host1-9471"


def test_the_metrics_exporter_and_dashboard_listen_where_the_docs_say() -> None:
    metrics = parse_exec(exec_start("procqueue-metrics.service"))
    assert (metrics.host, metrics.port) == ("0.0.0.0", METRICS_PORT)
    dashboard = parse_exec(exec_start("procqueue-dashboard.service"))
    assert dashboard.host == "127.0.0.1" and not dashboard.local_only  # behind a proxy
    assert unit_environment("procqueue-dashboard.service") == {
        "PROCQUEUE_DASHBOARD_COOKIE_SECURE": "true"
    }


def installed_command() -> str:
    """The `procqueue` command of this environment, as the units' ExecStart."""
    found = shutil.which("procqueue") or str(Path(sys.executable).with_name("procqueue"))
    assert Path(found).exists(), "no procqueue command installed beside this Python"
    return found


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (the units are still parsed above)")
    command = installed_command()
    paths = []
    for name in UNITS:
        text = (SYSTEMD / name).read_text()
        text = text.replace("/opt/procqueue/bin/procqueue", command)
        text = text.replace(INSTALLED_ENV_FILE, str(ENV_FILE))
        # A template is verified as one of its instances.
        path = tmp_path / name.replace("@.", f"@{INSTANCE['i']}.")
        path.write_text(text)
        paths.append(str(path))
    result = subprocess.run(
        [analyze, "verify", "--man=no", *paths],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    ours = [
        line for line in result.stderr.splitlines() if str(tmp_path) in line or ".service" in line
    ]
    assert result.returncode == 0 and not ours, result.stderr
