"""Jobs a worker cannot run at all, told before their task starts: args that are not
a JSON object of keyword arguments its task takes, or a task this worker does not
have (Procrastinate would crash the worker's job task on them and leave the job
`doing`, or fail it with no recorded reason)."""

from __future__ import annotations

import inspect
from typing import Any

from procrastinate.jobs import Job
from procrastinate.tasks import Task

from procqueue.errors import PermanentError


class UnknownTask(PermanentError):
    """A job names a task this worker does not have: the worker leaves it, waiting, to
    a worker that has it (procqueue/engine/worker.py)."""

    #: How every such job's postponement reason starts (health counts them by it).
    REASON = "unknown task"


class InvalidJobArgs(PermanentError):
    """A job's args are not keyword arguments its task takes."""


class Refusals:
    """Whether a job can run at all, with each task's signature read once."""

    def __init__(self) -> None:
        self._signatures: dict[str, inspect.Signature | None] = {}

    def refusal(self, job: Job, task: Task[Any, Any, Any] | None) -> PermanentError | None:
        """Why `job` cannot run as `task` (None: no task of its name), or None."""
        kwargs: Any = job.task_kwargs
        if not isinstance(kwargs, dict):
            return InvalidJobArgs(
                f"job args must be a JSON object of keyword arguments, got "
                f"{_json_kind(kwargs)}: {clipped_repr(kwargs)}; enqueue "
                f"procqueue.add_job({job.task_name!r}, '{{...}}'::jsonb, ...)"
            )
        if task is None:
            return UnknownTask(
                f"{UnknownTask.REASON} {job.task_name!r}: no task of that name in this worker; "
                "left for a worker that has it (a newer version: deploy it; a typo in what "
                f"enqueued it: `procqueue cancel {job.id}`)"
            )
        signature = self._signature(task)
        if signature is None:
            return None
        try:
            signature.bind(*([None] if task.pass_context else []), **kwargs)
        except TypeError as error:
            wanted = [
                name if parameter.default is inspect.Parameter.empty else f"{name}=..."
                for name, parameter in signature.parameters.items()
                if parameter.kind
                in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            ]
            given = ", ".join(clipped_repr(key, 40) for key in list(kwargs)[:10]) or "none"
            return InvalidJobArgs(
                f"{job.task_name} takes ({', '.join(wanted)}); the job's args ({given}) do "
                f"not fit: {error}"
            )
        return None

    def _signature(self, task: Task[Any, Any, Any]) -> inspect.Signature | None:
        if task.name not in self._signatures:
            try:
                self._signatures[task.name] = inspect.signature(task.func)
            except (TypeError, ValueError):
                self._signatures[task.name] = None
        return self._signatures[task.name]


def _json_kind(value: Any) -> str:
    kinds = {str: "a JSON string", list: "a JSON array", bool: "a JSON boolean"}
    if value is None:
        return "JSON null"
    for kind, name in kinds.items():
        if isinstance(value, kind):
            return name
    return "a JSON number" if isinstance(value, int | float) else type(value).__name__


def clipped_repr(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
