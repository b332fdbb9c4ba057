"""Retry: flow-level retry controllers and task-level retry policies.

A *controller* is attached to a flow (``LinearFlow("f", retry=Times(3))``). It runs before the
flow's tasks and may provide a value to them (``ForEach`` feeds one value per attempt). When a task
inside the flow fails, the controller decides: :attr:`Decision.RETRY` reverts what ran inside the
flow and runs it again; :attr:`Decision.REVERT` gives up and the failure propagates to the enclosing
flow, whose own controller (if any) decides next.

A :class:`RetryPolicy` is attached to one task for transient errors: the engine runs the task again,
after a delay, without reverting anything. It reuses tenacity's ``stop`` and ``wait`` strategy
objects, driven through a :class:`tenacity.RetryCallState`, so backoff is not re-implemented here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import tenacity
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from workerflow.failure import Failure

__all__ = [
    "Attempt",
    "Decision",
    "ForEach",
    "History",
    "ParameterizedForEach",
    "Retry",
    "RetryPolicy",
    "Times",
]


class Decision(StrEnum):
    """What a retry controller wants done about a failure inside its flow."""

    RETRY = "RETRY"  # revert the flow's tasks and run them again
    REVERT = "REVERT"  # give up; the failure propagates to the enclosing flow


@dataclass(frozen=True)
class Attempt:
    """One failed run of a controlled flow: the controller's value and what failed."""

    value: Any
    failures: Mapping[str, Failure]

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for storage."""
        return {
            "value": self.value,
            "failures": {name: f.to_dict() for name, f in self.failures.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attempt:
        """The inverse of :meth:`to_dict`."""
        failures = {name: Failure.from_dict(f) for name, f in data["failures"].items()}
        return cls(data["value"], failures)


@dataclass(frozen=True)
class History:
    """The failed attempts of a controlled flow so far, oldest first."""

    attempts: tuple[Attempt, ...] = ()

    def __len__(self) -> int:
        return len(self.attempts)

    @property
    def last_failures(self) -> Mapping[str, Failure]:
        """The failures of the latest attempt (empty before the first failure)."""
        return self.attempts[-1].failures if self.attempts else {}

    def values(self) -> list[Any]:
        """The controller values tried so far."""
        return [a.value for a in self.attempts]


class Retry(ABC):
    """A flow-level retry controller; subclass and define :meth:`execute` and :meth:`on_failure`.

    ``execute(history, **inputs)`` runs before each attempt and its return value is stored under
    ``provides``; ``on_failure(history, **inputs)`` sees the history including the attempt that just
    failed. Inputs come from ``requires`` (resolved like a task's) and ``rebind``.
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        provides: str | None = None,
        requires: str | Sequence[str] | None = None,
        rebind: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name or ""
        self.provides = provides
        if requires is None:
            requires = ()
        self.requires = (requires,) if isinstance(requires, str) else tuple(requires)
        self.rebind = dict(rebind or {})

    @property
    def provides_names(self) -> tuple[str, ...]:
        """The stored names the controller's value goes under."""
        return () if self.provides is None else (self.provides,)

    @property
    def inputs(self) -> dict[str, str]:
        """Keyword argument -> stored name."""
        return {name: self.rebind.get(name, name) for name in self.requires}

    @abstractmethod
    def execute(self, history: History, **inputs: Any) -> Any:
        """The value for the next attempt (stored under ``provides``)."""

    @abstractmethod
    def on_failure(self, history: History, **inputs: Any) -> Decision:
        """Whether to run the flow again after the attempt that just failed."""

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} {self.name!r}>"


class Times(Retry):
    """Run the flow at most ``attempts`` times in all; provides the attempt number (1, 2, ...)."""

    def __init__(
        self, attempts: int = 1, *, provides: str | None = None, name: str | None = None
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        super().__init__(name=name, provides=provides)
        self.attempts = attempts

    def execute(self, history: History, **inputs: Any) -> int:
        return len(history) + 1

    def on_failure(self, history: History, **inputs: Any) -> Decision:
        return Decision.RETRY if len(history) < self.attempts else Decision.REVERT


class ForEach(Retry):
    """Run the flow once per value until an attempt succeeds; provides the current value."""

    def __init__(
        self, values: Sequence[Any], *, provides: str | None = None, name: str | None = None
    ) -> None:
        super().__init__(name=name, provides=provides)
        self.values = list(values)

    def execute(self, history: History, **inputs: Any) -> Any:
        return _next_value(self, self.values, history)

    def on_failure(self, history: History, **inputs: Any) -> Decision:
        return Decision.RETRY if len(history) < len(self.values) else Decision.REVERT


class ParameterizedForEach(Retry):
    """Like :class:`ForEach`, with the values read from storage under ``requires``."""

    def __init__(
        self,
        *,
        requires: str,
        provides: str | None = None,
        name: str | None = None,
        rebind: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(name=name, provides=provides, requires=requires, rebind=rebind)
        self.source = requires

    def execute(self, history: History, **inputs: Any) -> Any:
        return _next_value(self, list(inputs[self.source]), history)

    def on_failure(self, history: History, **inputs: Any) -> Decision:
        return Decision.RETRY if len(history) < len(inputs[self.source]) else Decision.REVERT


def _next_value(controller: Retry, values: Sequence[Any], history: History) -> Any:
    if len(history) >= len(values):
        raise ValueError(f"retry controller {controller.name!r} has no value left to try")
    return values[len(history)]


# -- task-level retry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Run a task again after a transient error, with tenacity's stop and wait strategies.

    ``retry_on`` holds exception types or qualified type names (``"workerflow.errors.WorkerLost"``)
    matched with :meth:`Failure.check`, so it works for failures from remote workers too.
    """

    stop: stop_base = field(default_factory=lambda: tenacity.stop_after_attempt(3))
    wait: wait_base = field(default_factory=tenacity.wait_none)
    retry_on: tuple[type[BaseException] | str, ...] = (Exception,)

    def start(self) -> RetryState:
        """Begin tracking attempts of one run of a task (call when its first attempt starts)."""
        return RetryState(self)


class RetryState:
    """Attempts of one task under a :class:`RetryPolicy`, kept in a tenacity RetryCallState."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.call_state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})

    @property
    def attempt(self) -> int:
        """The number of the current (or last) attempt, from 1."""
        return self.call_state.attempt_number

    def next_delay(self, failure: Failure) -> float | None:
        """Seconds to wait before the next attempt, or None when the failure is final."""
        if not failure.check(*self.policy.retry_on):
            return None
        state = self.call_state
        exc = failure.to_exception()
        state.set_exception((type(exc), exc, exc.__traceback__))
        # Same order as tenacity's own loop: compute the wait, then ask whether to stop.
        state.upcoming_sleep = float(self.policy.wait(state))
        if self.policy.stop(state):
            return None
        state.idle_for += state.upcoming_sleep
        state.prepare_for_next_attempt()
        return state.upcoming_sleep
