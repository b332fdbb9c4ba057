"""States are strings and transitions are checked."""

from __future__ import annotations

import pytest

from workerflow.errors import InvalidTransition
from workerflow.states import FlowState, TaskState, check_flow_transition, check_task_transition


def test_states_are_string_valued() -> None:
    assert TaskState.REVERTED == "REVERTED"
    assert FlowState("SUSPENDED") is FlowState.SUSPENDED
    assert {s.value for s in TaskState} >= {"RETRYING", "REVERT_FAILURE"}


@pytest.mark.parametrize(
    ("current", "target"),
    [
        ("PENDING", "RUNNING"),
        ("RUNNING", "FAILURE"),
        ("FAILURE", "RETRYING"),
        ("RETRYING", "RUNNING"),
        ("SUCCESS", "REVERTING"),
        ("REVERTING", "REVERT_FAILURE"),
        ("REVERTED", "PENDING"),
    ],
)
def test_allowed_task_transitions(current: str, target: str) -> None:
    check_task_transition("t", TaskState(current), TaskState(target))


@pytest.mark.parametrize(
    ("current", "target"),
    [("PENDING", "SUCCESS"), ("REVERT_FAILURE", "PENDING"), ("RUNNING", "REVERTED")],
)
def test_forbidden_task_transitions(current: str, target: str) -> None:
    with pytest.raises(InvalidTransition) as raised:
        check_task_transition("task 'x'", TaskState(current), TaskState(target))
    assert raised.value.subject == "task 'x'"
    assert f"cannot go from {current} to {target}" in str(raised.value)


def test_flow_transitions() -> None:
    check_flow_transition("f", FlowState.SUSPENDED, FlowState.RESUMING)
    check_flow_transition("f", FlowState.REVERTING, FlowState.SUSPENDED)
    with pytest.raises(InvalidTransition):
        check_flow_transition("f", FlowState.SUCCESS, FlowState.RUNNING)
