"""Executors run an engine's task actions: locally (serial, threads, processes) or on workers.

``WorkerExecutor`` is loaded on first use, so a purely local flow never imports kombu.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workerflow.executors.base import Executor, TaskCall
from workerflow.executors.local import ProcessExecutor, SerialExecutor, ThreadExecutor

if TYPE_CHECKING:
    from workerflow.executors.worker import WorkerExecutor

__all__ = [
    "Executor",
    "ProcessExecutor",
    "SerialExecutor",
    "TaskCall",
    "ThreadExecutor",
    "WorkerExecutor",
]


def __getattr__(name: str) -> Any:
    if name == "WorkerExecutor":
        from workerflow.executors.worker import WorkerExecutor

        return WorkerExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
