"""deploy/prometheus/alerts.yml and deploy/grafana/procqueue.json: well formed, their
PromQL accepted by Prometheus's own `promtool` (Debian's `prometheus` package; .ci/run
installs it: skipped without it, failed under CI=true). That they read only series
procqueue exports is tests/test_health_metrics.py, against a real scrape."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.deploy import (
    ALERT_RULES,
    alert_expressions,
    grafana_expressions,
    grafana_panels,
)

#: What a dashboard panel is for, by a series it must read.
COVERED = (
    "procqueue_queue_jobs",  # queue depth per queue
    "procqueue_queue_lag_seconds",  # lag per queue
    "procqueue_jobs_total",  # throughput and error rate per task
    "procqueue_job_duration_seconds_bucket",  # duration quantiles
    "procqueue_sink_circuit_open",  # circuits, per worker
    "procqueue_sink_unavailable",  # circuits, as recorded for health
    "procqueue_workers",  # workers
    "procqueue_changes_waiting",  # changes waiting for a drain
)


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        reason = "promtool is not installed (apt-get install prometheus)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI=true: the rule check must run", pytrace=False)
        pytest.skip(reason)
    return found


def check_rules(path: Path) -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_alert_rules() -> None:
    check_rules(ALERT_RULES)


def test_promtool_accepts_every_dashboard_query(tmp_path: Path) -> None:
    """Each panel's PromQL, checked as a recording rule (promtool parses it)."""
    rules = [
        {"record": f"grafana:query_{index}", "expr": expr}
        for index, expr in enumerate(grafana_expressions().values())
    ]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "grafana", "rules": rules}]}))
    check_rules(path)


def test_every_alert_says_what_happened_and_how_bad() -> None:
    rules = yaml.safe_load(ALERT_RULES.read_text())["groups"][0]["rules"]
    assert len({rule["alert"] for rule in rules}) == len(rules) == len(alert_expressions())
    for rule in rules:
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule
        assert rule["annotations"]["summary"], rule


def test_the_dashboard_covers_the_queue_and_lays_out_its_panels() -> None:
    panels = grafana_panels()
    used = " ".join(grafana_expressions().values())
    missing = [series for series in COVERED if series not in used]
    assert not missing, missing
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(box["x"], box["x"] + box["w"])
            for y in range(box["y"], box["y"] + box["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]
