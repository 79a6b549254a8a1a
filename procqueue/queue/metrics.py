"""Prometheus metrics (the official `prometheus-client`).

- Worker side, in the process that runs jobs: `JOB_DURATION` (histogram) and
  `JOB_OUTCOMES` (counter) per task, filled by `procqueue.queue.outcomes`.
- Queue side, from the health SQL: `render_metrics` reads one snapshot and
  exposes it as gauges next to the process's own registry, so one scrape of
  `procqueue metrics` shows the whole queue whatever number of workers runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from procqueue.queue.health import Snapshot, Verdict

JOB_DURATION = Histogram(
    "procqueue_job_duration_seconds",
    "Time a job attempt took in the worker, by task and outcome.",
    ["task", "queue", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
JOB_OUTCOMES = Counter(
    "procqueue_jobs",
    "Job attempts finished by this worker, by task and outcome "
    "(succeeded, postponed: the same job waits again, no attempt spent, retried: failed "
    "and will run "
    "again, failed: for good, aborted).",
    ["task", "queue", "outcome"],
)


SINK_CIRCUIT_OPEN = Gauge(
    "procqueue_sink_circuit_open",
    "1 while this worker holds back the jobs of an outside service it found down "
    "(its circuit is open), else 0.",
    ["sink"],
)


def observe_job(task: str, queue: str, outcome: str, seconds: float) -> None:
    JOB_DURATION.labels(task, queue, outcome).observe(seconds)
    JOB_OUTCOMES.labels(task, queue, outcome).inc()


def _gauge(name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)


class SnapshotCollector(Collector):
    """Gauges over one health snapshot (queues, tasks, workers, tables, verdict)."""

    def __init__(self, snapshot: Snapshot, verdict: Verdict) -> None:
        self.snapshot = snapshot
        self.verdict = verdict

    def collect(self) -> Iterator[Metric]:
        yield from self._queues()
        yield from self._tasks()
        yield from self._workers()
        yield from self._tables()
        yield from self._changes()
        down = _gauge(
            "procqueue_sink_unavailable",
            "1 for each outside service whose circuit the workers last recorded open.",
            ["sink"],
        )
        for circuit in self.snapshot.open_circuits:
            down.add_metric([circuit.sink], 1.0)
        yield down
        paused = _gauge(
            "procqueue_queue_paused",
            "1 for each paused queue (procqueue pause): workers take none of its jobs.",
            ["queue"],
        )
        for queue in self.snapshot.paused:
            paused.add_metric([queue.queue_name], 1.0)
        yield paused
        status = _gauge(
            "procqueue_health_status", "0 healthy, 1 degraded, 2 unhealthy (procqueue health).", []
        )
        status.add_metric([], float(self.verdict.status))
        yield status

    def _queues(self) -> Iterator[Metric]:
        jobs = _gauge(
            "procqueue_queue_jobs", "Active jobs per queue and state.", ["queue", "state"]
        )
        lag = _gauge(
            "procqueue_queue_lag_seconds",
            "How long the oldest waiting job has been due.",
            ["queue"],
        )
        failed = _gauge(
            "procqueue_queue_failed_jobs",
            "Final failures in the last hour/day.",
            ["queue", "window"],
        )
        rate = _gauge(
            "procqueue_queue_finished_per_minute",
            "Jobs finished per minute, averaged over the last 5 or 60 minutes.",
            ["queue", "window"],
        )
        for queue in self.snapshot.queues:
            name = queue.queue_name
            for state, value in (
                ("waiting", queue.waiting),
                ("running", queue.running),
                ("scheduled", queue.scheduled),
                ("retry_scheduled", queue.retry_scheduled),
            ):
                jobs.add_metric([name, state], value)
            lag.add_metric([name], queue.lag_seconds)
            failed.add_metric([name, "1h"], queue.failed_last_hour)
            failed.add_metric([name, "1d"], queue.failed_last_day)
            rate.add_metric([name, "5m"], queue.finished_per_minute_5m)
            rate.add_metric([name, "60m"], queue.finished_per_minute_60m)
        yield from (jobs, lag, failed, rate)

    def _changes(self) -> Iterator[Metric]:
        waiting = _gauge(
            "procqueue_changes_waiting",
            "Row changes waiting for their entity's drain job (a backlog is one job).",
            ["entity"],
        )
        age = _gauge(
            "procqueue_changes_oldest_seconds",
            "How long the oldest waiting change of the entity has waited.",
            ["entity"],
        )
        now = datetime.now(UTC)
        for backlog in self.snapshot.changes:
            waiting.add_metric([backlog.entity], backlog.waiting)
            age.add_metric([backlog.entity], (now - backlog.oldest_at).total_seconds())
        yield from (waiting, age)

    def _tasks(self) -> Iterator[Metric]:
        window = f"{int(self.snapshot.window.total_seconds())}s"
        attempts = _gauge(
            "procqueue_task_attempts",
            "Job attempts ended in the health window, by task and result.",
            ["task", "result", "window"],
        )
        failure = _gauge(
            "procqueue_task_failure_ratio",
            "Share of the task's finished jobs that failed for good, in the health window.",
            ["task", "window"],
        )
        duration = _gauge(
            "procqueue_task_duration_seconds",
            "Attempt duration in the health window (p50, p95, max), from Procrastinate's events.",
            ["task", "stat", "window"],
        )
        for task in self.snapshot.tasks:
            name = task.task_name
            for result, value in (
                ("succeeded", task.succeeded),
                ("failed", task.failed),
                ("retried", task.retries),
                ("aborted", task.aborted),
            ):
                attempts.add_metric([name, result, window], value)
            if task.failure_rate is not None:
                failure.add_metric([name, window], task.failure_rate)
            for stat, seconds in (
                ("p50", task.p50_seconds),
                ("p95", task.p95_seconds),
                ("max", task.max_seconds),
            ):
                if seconds is not None:
                    duration.add_metric([name, stat, window], seconds)
        yield from (attempts, failure, duration)

    def _workers(self) -> Iterator[Metric]:
        count = _gauge("procqueue_workers", "Registered workers, healthy or stalled.", ["state"])
        age = _gauge(
            "procqueue_worker_heartbeat_age_seconds",
            "Seconds since each worker's heartbeat.",
            ["worker"],
        )
        in_hand = _gauge("procqueue_worker_jobs", "Jobs each worker is running.", ["worker"])
        healthy = sum(1 for worker in self.snapshot.workers if worker.healthy)
        count.add_metric(["healthy"], healthy)
        count.add_metric(["stalled"], len(self.snapshot.workers) - healthy)
        for worker in self.snapshot.workers:
            age.add_metric([str(worker.worker_id)], worker.heartbeat_age_seconds)
            in_hand.add_metric([str(worker.worker_id)], worker.jobs_in_hand)
        yield from (count, age, in_hand)

    def _tables(self) -> Iterator[Metric]:
        size = _gauge(
            "procqueue_table_size_bytes",
            "Size of each queue table: heap, indexes, total.",
            ["table", "part"],
        )
        dead = _gauge("procqueue_table_dead_tuples", "Dead tuples waiting for vacuum.", ["table"])
        for table in self.snapshot.tables:
            name = f"{table.schema_name}.{table.table_name}"
            size.add_metric([name, "table"], table.table_bytes)
            size.add_metric([name, "indexes"], table.index_bytes)
            size.add_metric([name, "total"], table.total_bytes)
            dead.add_metric([name], table.dead_tuples or 0)
        yield from (size, dead)


class _WithSamples(Collector):
    """The families of a process registry that have samples: `procqueue metrics` and the
    dashboard run no job, so the worker families (job counters and durations, circuit
    gauges) would be HELP/TYPE pairs with no series; they are left out. A worker
    process's own port serves them once it has run a job."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        return (family for family in self.registry.collect() if family.samples)


def render_metrics(
    snapshot: Snapshot | None, verdict: Verdict | None, registry: CollectorRegistry = REGISTRY
) -> bytes:
    """The Prometheus text exposition: this process's metrics that have samples, then the
    snapshot's gauges (each declared, with a series per queue, task, worker... it has)."""
    output = CollectorRegistry(auto_describe=False)
    output.register(_WithSamples(registry))
    if snapshot is not None and verdict is not None:
        output.register(SnapshotCollector(snapshot, verdict))
    return generate_latest(output)
