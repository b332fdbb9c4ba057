"""workerflow: flows of tasks with revert, run locally or on a fleet of workers over a message bus.

Importing this package never imports kombu nor touches the network; the worker-based executor is
loaded from :mod:`workerflow.executors` on first use.
"""

from __future__ import annotations

from workerflow import states
from workerflow.engine import Engine, run
from workerflow.failure import Failure
from workerflow.flow import Flow, GraphFlow, LinearFlow, UnorderedFlow
from workerflow.storage import MemoryStorage, Storage
from workerflow.task import FunctionTask, Task, task

__all__ = [
    "Engine",
    "Failure",
    "Flow",
    "FunctionTask",
    "GraphFlow",
    "LinearFlow",
    "MemoryStorage",
    "Storage",
    "Task",
    "UnorderedFlow",
    "run",
    "states",
    "task",
]
