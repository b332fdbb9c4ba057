"""Storage: where an engine keeps task states, results, failures, progress and flow metadata.

The interface is small and value-oriented (names, strings, plain values) so that a Redis-backed
implementation can store it as msgpack; :class:`MemoryStorage` is the in-process one and the
default. Results are kept per task; ``fetch(name)`` finds the value a task provided under ``name``
(the last one stored wins) or, failing that, the value the flow was started with (the *store*).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from workerflow.errors import NotFound
from workerflow.failure import Failure
from workerflow.states import FlowState, TaskState

__all__ = ["MemoryStorage", "Storage"]


class Storage(ABC):
    """What an engine persists about one flow run. Implementations must be thread-safe."""

    # -- the flow ------------------------------------------------------------------------------

    @abstractmethod
    def get_flow_state(self) -> FlowState:
        """The flow's state (PENDING before the first run)."""

    @abstractmethod
    def set_flow_state(self, state: FlowState) -> None:
        """Record the flow's state (the engine checks the transition first)."""

    @abstractmethod
    def get_meta(self, key: str, default: Any = None) -> Any:
        """Flow metadata (e.g. a retry controller's history), or ``default``."""

    @abstractmethod
    def set_meta(self, key: str, value: Any) -> None:
        """Set flow metadata; ``value`` must be msgpack-friendly."""

    @abstractmethod
    def delete_meta(self, key: str) -> None:
        """Forget flow metadata; no error when absent."""

    # -- the initial store ---------------------------------------------------------------------

    @abstractmethod
    def get_store(self) -> dict[str, Any]:
        """A copy of the values the flow was given to start with."""

    @abstractmethod
    def update_store(self, values: Mapping[str, Any]) -> None:
        """Add or replace initial values."""

    # -- tasks ---------------------------------------------------------------------------------

    @abstractmethod
    def get_state(self, task: str) -> TaskState:
        """The task's state (PENDING for a task never seen)."""

    @abstractmethod
    def set_state(self, task: str, state: TaskState) -> None:
        """Record the task's state."""

    @abstractmethod
    def save_result(self, task: str, result: Any, provided: Mapping[str, Any]) -> None:
        """Store what ``task`` returned and the values it provides, by provided name."""

    @abstractmethod
    def get_result(self, task: str) -> Any:
        """What ``task`` returned; NotFound if it has no result."""

    @abstractmethod
    def save_failure(self, task: str, failure: Failure, *, revert: bool = False) -> None:
        """Store why ``task``'s execute (or, with ``revert=True``, its revert) failed."""

    @abstractmethod
    def get_failure(self, task: str, *, revert: bool = False) -> Failure | None:
        """The failure of ``task``'s execute (or revert), if any."""

    @abstractmethod
    def save_progress(self, task: str, fraction: float, details: Mapping[str, Any]) -> None:
        """Store the last progress a task reported."""

    @abstractmethod
    def get_progress(self, task: str) -> tuple[float, dict[str, Any]] | None:
        """The last ``(fraction, details)`` a task reported, if any."""

    @abstractmethod
    def reset(self, task: str) -> None:
        """Forget the task's result, failures and progress (it is about to run again)."""

    # -- values by name ------------------------------------------------------------------------

    @abstractmethod
    def fetch(self, name: str) -> Any:
        """The value provided under ``name`` (else the initial store's); NotFound if none."""

    @abstractmethod
    def fetch_all(self) -> dict[str, Any]:
        """Every name with its value: the initial store overlaid with what tasks provided."""


class MemoryStorage(Storage):
    """Keeps everything in this process's memory; thread-safe; the engine's default."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flow_state = FlowState.PENDING
        self._meta: dict[str, Any] = {}
        self._store: dict[str, Any] = {}
        self._states: dict[str, TaskState] = {}
        self._results: dict[str, Any] = {}
        self._failures: dict[tuple[str, bool], Failure] = {}
        self._progress: dict[str, tuple[float, dict[str, Any]]] = {}
        self._values: dict[str, tuple[str, Any]] = {}  # provided name -> (task, value)
        self._provided_by: dict[str, tuple[str, ...]] = {}  # task -> names it provided

    def get_flow_state(self) -> FlowState:
        return self._flow_state

    def set_flow_state(self, state: FlowState) -> None:
        with self._lock:
            self._flow_state = state

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return self._meta.get(key, default)

    def set_meta(self, key: str, value: Any) -> None:
        with self._lock:
            self._meta[key] = value

    def delete_meta(self, key: str) -> None:
        with self._lock:
            self._meta.pop(key, None)

    def get_store(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._store)

    def update_store(self, values: Mapping[str, Any]) -> None:
        with self._lock:
            self._store.update(values)

    def get_state(self, task: str) -> TaskState:
        return self._states.get(task, TaskState.PENDING)

    def set_state(self, task: str, state: TaskState) -> None:
        with self._lock:
            self._states[task] = state

    def save_result(self, task: str, result: Any, provided: Mapping[str, Any]) -> None:
        with self._lock:
            self._results[task] = result
            for name, value in provided.items():
                self._values[name] = (task, value)
            self._provided_by[task] = tuple(provided)

    def get_result(self, task: str) -> Any:
        with self._lock:
            try:
                return self._results[task]
            except KeyError:
                raise NotFound(f"task {task!r} has no result") from None

    def save_failure(self, task: str, failure: Failure, *, revert: bool = False) -> None:
        with self._lock:
            self._failures[task, revert] = failure

    def get_failure(self, task: str, *, revert: bool = False) -> Failure | None:
        with self._lock:
            return self._failures.get((task, revert))

    def save_progress(self, task: str, fraction: float, details: Mapping[str, Any]) -> None:
        with self._lock:
            self._progress[task] = (fraction, dict(details))

    def get_progress(self, task: str) -> tuple[float, dict[str, Any]] | None:
        with self._lock:
            return self._progress.get(task)

    def reset(self, task: str) -> None:
        with self._lock:
            self._results.pop(task, None)
            self._failures.pop((task, False), None)
            self._failures.pop((task, True), None)
            self._progress.pop(task, None)
            for name in self._provided_by.pop(task, ()):
                owner = self._values.get(name)
                if owner is not None and owner[0] == task:
                    del self._values[name]

    def fetch(self, name: str) -> Any:
        with self._lock:
            if name in self._values:
                return self._values[name][1]
            if name in self._store:
                return self._store[name]
        raise NotFound(f"nothing is stored under {name!r}")

    def fetch_all(self) -> dict[str, Any]:
        with self._lock:
            values = dict(self._store)
            values.update((name, value) for name, (_, value) in self._values.items())
            return values
