"""Messages: construction, validation in one place, to_dict/from_dict."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from proxy.errors import InvalidMessage
from proxy.messages import MESSAGE_TYPES, Cancel, Discover, Heartbeat, Request, Response


def request(**changes: Any) -> Request:
    fields: dict[str, Any] = dict(
        id="r1", attempt=1, task_type="m:T", task_name="t", action="execute",
        arguments={"x": 1}, reply_to="ns.replies.e", deadline=100.0, execution_timeout=None,
    )  # fmt: skip
    fields.update(changes)
    return Request(**fields)


def heartbeat() -> Heartbeat:
    return Heartbeat(
        worker_id="h.1.ab", hostname="h", pid=1, queues=["default"], task_types=["m:T"],
        concurrency=2, free_slots=1, interval=1.0, running=["r1"], version="0.1.0",
    )  # fmt: skip


@pytest.mark.parametrize(
    "message",
    [
        request(),
        request(action="revert", result=[1, 2], failure={"type": "X"}, flow_failures={"a": {}}),
        Response("r1", 1, "w", "success", result={"a": [1]}),
        Response("r1", 2, "w", "progress", progress=0.5, details={"step": 1}),
        heartbeat(),
        Discover("client-1"),
        Cancel("r1"),
    ],
)
def test_round_trip_through_dict(message: Any) -> None:
    data = message.to_dict()
    assert type(message).from_dict(data) == message
    assert MESSAGE_TYPES[message.KIND] is type(message)


def test_messages_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        request().id = "other"  # type: ignore[misc]


def test_numbers_are_normalised() -> None:
    r = request(deadline=5, execution_timeout=3)
    assert isinstance(r.deadline, float) and isinstance(r.execution_timeout, float)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"attempt": 0}, "attempt"),
        ({"attempt": True}, "attempt"),
        ({"action": "run"}, "action"),
        ({"arguments": {1: 2}}, "arguments"),
        ({"arguments": [1]}, "arguments"),
        ({"deadline": "soon"}, "deadline"),
        ({"execution_timeout": "1"}, "execution_timeout"),
        ({"flow_failures": {"a": 1}}, "flow_failures"),
        ({"id": ""}, "id"),
    ],
)
def test_bad_field_is_named(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidMessage, match=f"request field '{field}'") as info:
        request(**changes)
    assert info.value.reply_to == "ns.replies.e"


def test_from_dict_reports_missing_fields_with_request_id_and_reply_to() -> None:
    data = request().to_dict()
    del data["task_type"]
    with pytest.raises(InvalidMessage, match=r"missing field.*task_type") as info:
        Request.from_dict(data)
    assert info.value.request_id == "r1"
    assert info.value.reply_to == "ns.replies.e"
    assert info.value.reason.startswith("request is missing")


def test_from_dict_ignores_unknown_keys_and_rejects_non_maps() -> None:
    data = {**Cancel("r1").to_dict(), "future_field": 1}
    assert Cancel.from_dict(data) == Cancel("r1")
    with pytest.raises(InvalidMessage, match="must be a map"):
        Cancel.from_dict(["r1"])  # type: ignore[arg-type]


def test_response_state_and_progress_checked() -> None:
    with pytest.raises(InvalidMessage, match="'state'") as info:
        Response("r1", 1, "w", "done")
    assert info.value.request_id == "r1"
    with pytest.raises(InvalidMessage, match="'progress'"):
        Response("r1", 1, "w", "progress", progress=1.5)


def test_heartbeat_lists_checked() -> None:
    data = heartbeat().to_dict()
    data["queues"] = ["a", 1]
    with pytest.raises(InvalidMessage, match="'queues' must be a list of strings"):
        Heartbeat.from_dict(data)
