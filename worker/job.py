"""Job: one task action a pool runs, its Outcome, and :func:`run_job`, shared by every pool.

A Job holds only plain values (it crosses into child processes as msgpack), so the task object is
built where the job runs, from that process's own :class:`~worker.registry.Registry`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from worker.registry import Registry
from workerflow.failure import Failure
from workerflow.task import ProgressSink, run_action

__all__ = ["Job", "Outcome", "fault", "run_job"]


@dataclass(frozen=True)
class Job:
    """One execute or revert of one task, as a worker received it (plain, msgpack-safe values)."""

    request_id: str
    attempt: int
    task_type: str
    task_name: str
    action: Literal["execute", "revert"]
    arguments: dict[str, Any]
    reply_to: str
    execution_timeout: float | None = None
    result: Any = None
    failure: dict[str, Any] | None = None
    flow_failures: dict[str, dict[str, Any]] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)

    @property
    def label(self) -> str:
        """``<id> <task name>`` for log lines."""
        return f"{self.request_id} {self.task_name}"

    def to_wire(self) -> dict[str, Any]:
        """The fields a child process needs to run the job."""
        return {
            "request_id": self.request_id,
            "task_type": self.task_type,
            "task_name": self.task_name,
            "action": self.action,
            "arguments": self.arguments,
            "result": self.result,
            "failure": self.failure,
            "flow_failures": self.flow_failures,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Job:
        """Inverse of :meth:`to_wire` (in the child; reply fields are not needed there)."""
        return cls(
            request_id=data["request_id"],
            attempt=0,
            task_type=data["task_type"],
            task_name=data["task_name"],
            action=data["action"],
            arguments=data["arguments"],
            reply_to="",
            result=data["result"],
            failure=data["failure"],
            flow_failures=data["flow_failures"],
        )


@dataclass(frozen=True)
class Outcome:
    """How a job ended: ``success`` with its result or ``failure`` with a ``Failure.to_dict()``."""

    state: Literal["success", "failure"]
    result: Any = None
    failure: dict[str, Any] | None = None

    @classmethod
    def failed(cls, exc: BaseException) -> Outcome:
        """A failure outcome recording ``exc`` (type names, message, traceback)."""
        return cls("failure", failure=Failure.from_exception(exc).to_dict())


def fault(error: type[BaseException], message: str) -> dict[str, Any]:
    """A Failure dict for a named fault, built by raising ``error`` so its type names are right."""
    try:
        raise error(message)
    except BaseException as exc:
        return Failure.from_exception(exc).to_dict()


def run_job(registry: Registry, job: Job, progress: ProgressSink | None) -> Outcome:
    """Build the task and run its action through :func:`workerflow.task.run_action`.

    Never raises: whatever the task code raises (even ``SystemExit``) becomes a failure Outcome.
    """
    try:
        task = registry.build(job.task_type, job.task_name)
        if job.action == "revert":
            result = Failure.from_dict(job.failure) if job.failure is not None else job.result
            flow_failures = {
                name: Failure.from_dict(data) for name, data in job.flow_failures.items()
            }
            value = run_action(
                task,
                "revert",
                job.arguments,
                result=result,
                flow_failures=flow_failures,
                progress=progress,
            )
        else:
            value = run_action(task, "execute", job.arguments, progress=progress)
    except BaseException as exc:
        return Outcome.failed(exc)
    return Outcome("success", result=value)
