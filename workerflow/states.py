"""Flow and task states, and the transitions between them that are allowed.

States are string-valued (``state == "REVERTED"`` holds) so they store and travel as plain text. An
impossible transition is a bug and raises :class:`~workerflow.errors.InvalidTransition`.
"""

from __future__ import annotations

from enum import StrEnum

from workerflow.errors import InvalidTransition

__all__ = ["FlowState", "TaskState", "check_flow_transition", "check_task_transition"]


class FlowState(StrEnum):
    """Where a whole flow run stands."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"  # a task failed and reverting it failed too
    REVERTING = "REVERTING"
    REVERTED = "REVERTED"  # a task failed and everything that ran was reverted
    SUSPENDED = "SUSPENDED"
    RESUMING = "RESUMING"


class TaskState(StrEnum):
    """Where one task (or retry controller) stands."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVERTING = "REVERTING"
    REVERTED = "REVERTED"
    REVERT_FAILURE = "REVERT_FAILURE"
    RETRYING = "RETRYING"  # failed, waiting to run again under its retry policy


_FLOW: dict[FlowState, frozenset[FlowState]] = {
    FlowState.PENDING: frozenset({FlowState.RUNNING}),
    FlowState.RUNNING: frozenset(
        {FlowState.SUCCESS, FlowState.REVERTING, FlowState.SUSPENDED, FlowState.FAILURE}
    ),
    FlowState.REVERTING: frozenset({FlowState.REVERTED, FlowState.FAILURE, FlowState.SUSPENDED}),
    FlowState.SUSPENDED: frozenset({FlowState.RESUMING}),
    FlowState.RESUMING: frozenset(
        {FlowState.RUNNING, FlowState.REVERTING, FlowState.SUCCESS, FlowState.REVERTED}
    ),
    FlowState.SUCCESS: frozenset(),
    FlowState.REVERTED: frozenset(),
    FlowState.FAILURE: frozenset(),
}

_TASK: dict[TaskState, frozenset[TaskState]] = {
    TaskState.PENDING: frozenset({TaskState.RUNNING}),
    TaskState.RUNNING: frozenset({TaskState.SUCCESS, TaskState.FAILURE}),
    # SUCCESS -> RETRYING: a retry controller whose flow failed and is about to run again.
    TaskState.SUCCESS: frozenset({TaskState.REVERTING, TaskState.RETRYING}),
    TaskState.FAILURE: frozenset({TaskState.REVERTING, TaskState.RETRYING}),
    TaskState.RETRYING: frozenset({TaskState.RUNNING, TaskState.REVERTING}),
    TaskState.REVERTING: frozenset({TaskState.REVERTED, TaskState.REVERT_FAILURE}),
    TaskState.REVERTED: frozenset({TaskState.PENDING}),  # a flow retry runs it again
    TaskState.REVERT_FAILURE: frozenset(),
}


def check_flow_transition(subject: str, current: FlowState, target: FlowState) -> None:
    """Raise InvalidTransition unless a flow may go from ``current`` to ``target``."""
    if target not in _FLOW[current]:
        raise InvalidTransition(subject, current, target)


def check_task_transition(subject: str, current: TaskState, target: TaskState) -> None:
    """Raise InvalidTransition unless a task may go from ``current`` to ``target``."""
    if target not in _TASK[current]:
        raise InvalidTransition(subject, current, target)
