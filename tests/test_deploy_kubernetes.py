"""deploy/kubernetes cannot run here (no cluster): its YAML is parsed and every
command, port, probe path and variable it gives our image is checked against the
code, as tests/test_compose.py does for docker-compose.yml."""

from __future__ import annotations

import typing
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from pydantic import SecretStr
from starlette.routing import BaseRoute

from procqueue.dashboard.app import create_app as create_dashboard
from procqueue.dashboard.security import access_for
from procqueue.engine.probes import LIVE_PATH, READY_PATH
from procqueue.features import Settings
from procqueue.queue.server import create_app as create_exporter
from tests.support.deploy import env_name, load_settings_from, parse_command, unknown_variables
from tests.support.repo import REPO_DIR

KUBERNETES = REPO_DIR / "deploy" / "kubernetes"
DOCUMENTS: dict[str, list[dict[str, Any]]] = {
    path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for path in sorted(KUBERNETES.glob("*.yaml"))
}
#: A stand-in for what the Secret holds, to load the settings.
SECRET_VALUES = {
    "DATABASE_URL": "postgresql://procqueue_worker:pw@db.example.com:5432/postgres",
    "PROCQUEUE_DASHBOARD_SECRET": "x" * 40,
}


def objects(kind: str) -> dict[str, dict[str, Any]]:
    return {
        doc["metadata"]["name"]: doc
        for docs in DOCUMENTS.values()
        for doc in docs
        if doc["kind"] == kind
    }


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("Deployment", "Job"):
        for name, workload in objects(kind).items():
            for container in pod_spec(workload)["containers"]:
                yield name, container


CONTAINERS = dict(containers())
CONFIG = objects("ConfigMap")["procqueue"]["data"]


def secret_variables() -> set[str]:
    """The variables of every setting that holds a secret (a SecretStr field)."""
    return {
        env_name(name, field)
        for name, field in Settings.model_fields.items()
        if SecretStr in (field.annotation, *typing.get_args(field.annotation))
    }


def settings_of(container: dict[str, Any]) -> Settings:
    """The settings the container gets: the ConfigMap, its env and the Secret's keys."""
    environment = {**CONFIG}
    for variable in container.get("env", []):
        if "value" in variable:
            environment[variable["name"]] = variable["value"]
        elif variable["name"] in SECRET_VALUES:
            environment[variable["name"]] = SECRET_VALUES[variable["name"]]
    return load_settings_from(environment)


def test_the_files_hold_the_workloads_and_no_secret() -> None:
    assert set(objects("Deployment")) == {
        "procqueue-worker",
        "procqueue-dashboard",
        "procqueue-metrics",
    }
    assert set(objects("Job")) == {"procqueue-migrate"}
    assert set(objects("Service")) == {"procqueue-dashboard", "procqueue-metrics"}
    assert not objects("Secret"), "secrets are referenced, never written in these files"


@pytest.mark.parametrize("name", sorted(CONTAINERS))
def test_every_container_runs_a_real_command_and_sets_only_settings(name: str) -> None:
    container = CONTAINERS[name]
    args = parse_command(container["command"])
    assert f"procqueue-{args.command}" == name
    assert [source["configMapRef"]["name"] for source in container["envFrom"]] == ["procqueue"]
    names = {variable["name"] for variable in container.get("env", [])}
    unknown = unknown_variables(names | set(CONFIG))
    assert not unknown, f"{name} sets variables no setting reads: {unknown}"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    settings_of(container)  # they load


@pytest.mark.parametrize("name", sorted(CONTAINERS))
def test_secrets_come_from_the_secret_reference(name: str) -> None:
    secret = secret_variables()
    assert "DATABASE_URL" in secret and "SENTRY_DSN" in secret
    assert not secret & set(CONFIG), "a secret in the ConfigMap"
    for variable in CONTAINERS[name].get("env", []):
        if variable["name"] in secret:
            reference = variable["valueFrom"]["secretKeyRef"]
            assert reference == {**reference, "name": "procqueue", "key": variable["name"]}
            assert "value" not in variable


def test_the_worker_is_probed_on_its_own_port_and_outlives_its_stop_timeout() -> None:
    worker = objects("Deployment")["procqueue-worker"]
    container = CONTAINERS["procqueue-worker"]
    settings = settings_of(container)
    [port] = container["ports"]
    assert port["containerPort"] == settings.metrics_port
    assert container["livenessProbe"]["httpGet"] == {"path": LIVE_PATH, "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": READY_PATH, "port": port["name"]}
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(settings.metrics_port)
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0  # upgrading.md
    grace = pod_spec(worker)["terminationGracePeriodSeconds"]
    assert grace > settings.shutdown_timeout + 5, (grace, settings.shutdown_timeout)
    assert 5 <= settings.concurrency <= 10


def route_paths(routes: list[BaseRoute]) -> set[str]:
    return {str(getattr(route, "path", "")) for route in routes}


def served_port(name: str) -> tuple[dict[str, Any], int]:
    container = CONTAINERS[name]
    args = parse_command(container["command"])
    [port] = container["ports"]
    assert port["containerPort"] == args.port and args.host == "0.0.0.0"
    service = objects("Service")[name]
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": name}
    assert [entry["targetPort"] for entry in service["spec"]["ports"]] == [port["name"]]
    return container, args.port


def test_the_dashboard_service_and_probes_reach_real_routes() -> None:
    container, _ = served_port("procqueue-dashboard")
    settings = settings_of(container)
    assert settings.dashboard_cookie_secure
    app = create_dashboard(settings, access_for(settings, "0.0.0.0", local_only=False))
    paths = route_paths(app.routes)
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] in paths


def test_the_exporter_service_serves_the_queue_metrics() -> None:
    container, port = served_port("procqueue-metrics")
    assert "/metrics" in route_paths(create_exporter(settings_of(container)).routes)
    annotations = objects("Service")["procqueue-metrics"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)


def test_the_migrate_job_runs_once_without_restarting_in_place() -> None:
    job = objects("Job")["procqueue-migrate"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] >= 1
