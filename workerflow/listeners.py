"""Listeners: ready-made engine observers (a logging one and a timing one).

A listener registers on both of an engine's notifiers, atomically, and is used as a context
manager::

    with LoggingListener(engine), TimingListener(engine) as timing:
        engine.run()
    print(timing.durations)
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from workerflow.notifier import PROGRESS
from workerflow.reraise import cleanup_then_reraise
from workerflow.states import TaskState

if TYPE_CHECKING:
    from workerflow.engine import Engine

__all__ = ["Listener", "LoggingListener", "TimingListener"]


class Listener:
    """Base: override :meth:`on_flow` and/or :meth:`on_task`; ``register``/``deregister``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def on_flow(self, state: str, details: dict[str, Any]) -> None:
        """Called for each flow state change."""

    def on_task(self, event: str, details: dict[str, Any]) -> None:
        """Called for each task state change and progress report."""

    def register(self) -> None:
        """Start listening on both notifiers (both or neither)."""
        self.engine.notifier.register(self.on_flow)
        try:
            self.engine.atom_notifier.register(self.on_task)
        except Exception:
            with cleanup_then_reraise():
                self.engine.notifier.deregister(self.on_flow)

    def deregister(self) -> None:
        """Stop listening."""
        self.engine.notifier.deregister(self.on_flow)
        self.engine.atom_notifier.deregister(self.on_task)

    def __enter__(self) -> Self:
        self.register()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.deregister()


class LoggingListener(Listener):
    """Logs every flow and task state change (and progress at DEBUG)."""

    def __init__(
        self, engine: Engine, *, logger: logging.Logger | None = None, level: int = logging.INFO
    ) -> None:
        super().__init__(engine)
        self.logger = logger or logging.getLogger(__name__)
        self.level = level

    def on_flow(self, state: str, details: dict[str, Any]) -> None:
        self.logger.log(self.level, "flow %r is %s", details.get("flow"), state)

    def on_task(self, event: str, details: dict[str, Any]) -> None:
        task = details.get("task")
        if event == PROGRESS:
            self.logger.debug("task %r progress %.0f%%", task, 100 * details["progress"])
        elif event in (TaskState.FAILURE, TaskState.REVERT_FAILURE):
            self.logger.log(self.level, "task %r is %s: %s", task, event, details.get("failure"))
        else:
            self.logger.log(self.level, "task %r is %s", task, event)


class TimingListener(Listener):
    """Measures how long each task's execute took (from RUNNING to SUCCESS or FAILURE)."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}
        #: Seconds of the latest attempt of each finished task.
        self.durations: dict[str, float] = {}

    def on_task(self, event: str, details: dict[str, Any]) -> None:
        task = str(details.get("task"))
        now = time.perf_counter()
        with self._lock:
            if event == TaskState.RUNNING:
                self._started[task] = now
            elif event in (TaskState.SUCCESS, TaskState.FAILURE) and task in self._started:
                self.durations[task] = now - self._started.pop(task)
