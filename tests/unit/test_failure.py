"""Failure: a pickle-free, msgpack-safe record of an exception."""

from __future__ import annotations

import pytest

from workerflow.errors import RemoteError, SerializationError, WorkerLost
from workerflow.failure import Failure


class Custom(Exception):
    pass


def capture(exc: BaseException) -> Failure:
    try:
        raise exc
    except BaseException:
        return Failure.current()


def test_captures_type_names_message_traceback_and_cause() -> None:
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise Custom("outer") from inner
    except Custom:
        failure = Failure.current()
    assert failure.exception_type_names[0] == f"{__name__}.Custom"
    assert "builtins.Exception" in failure.exception_type_names
    assert failure.message == "outer"
    assert "Traceback" in failure.traceback_text and "raise Custom" in failure.traceback_text
    assert failure.cause is not None and failure.cause.check(KeyError)
    assert str(failure) == "Custom: outer"


def test_dict_round_trip_is_plain_and_equal() -> None:
    failure = capture(ValueError("bad"))
    data = failure.to_dict()
    assert data["version"] == 1
    assert all(isinstance(n, str) for n in data["exception_type_names"])
    again = Failure.from_dict(data)
    assert again == failure and hash(again) == hash(failure)
    assert again.exception is None


@pytest.mark.parametrize(
    "data",
    [
        "nope",
        {"version": 99},
        {"version": 1, "exception_type_names": [], "message": "m"},
        {"version": 1, "exception_type_names": ["x"], "message": 5},
    ],
)
def test_from_dict_rejects_bad_data(data: object) -> None:
    with pytest.raises(SerializationError):
        Failure.from_dict(data)  # type: ignore[arg-type]


def test_reraise_raises_the_original_object_locally() -> None:
    original = Custom("same")
    failure = Failure.from_exception(original)
    with pytest.raises(Custom) as raised:
        failure.reraise()
    assert raised.value is original


def test_reraise_rebuilds_a_known_type_from_the_wire() -> None:
    failure = Failure.from_dict(capture(WorkerLost("gone")).to_dict())
    with pytest.raises(WorkerLost, match="gone") as raised:
        failure.reraise()
    assert any("remote traceback" in n for n in raised.value.__notes__)


def test_reraise_unknown_type_is_remote_error() -> None:
    failure = Failure(("remote.only.Error", "builtins.Exception"), "far away", "tb")
    with pytest.raises(RemoteError, match=r"remote\.only\.Error: far away") as raised:
        failure.reraise()
    assert raised.value.failure is failure
    assert Failure.from_exception(raised.value) is failure


def test_check_accepts_classes_and_names() -> None:
    failure = capture(KeyError("k"))
    assert failure.check(ValueError, LookupError) is LookupError
    assert failure.check("builtins.KeyError") == "builtins.KeyError"
    assert failure.check(ValueError) is None
    remote = Failure(("workerflow.errors.WorkerLost",), "x")
    assert remote.check(WorkerLost) is WorkerLost


def test_current_outside_except_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        Failure.current()
