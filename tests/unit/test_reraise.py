"""cleanup_then_reraise: the original exception always propagates; a cleanup error is not lost."""

from __future__ import annotations

import logging

import pytest

from workerflow.reraise import cleanup_then_reraise


def test_reraises_the_original_after_cleanup() -> None:
    cleaned: list[str] = []
    original = ValueError("original")
    with pytest.raises(ValueError) as raised:
        try:
            raise original
        except ValueError:
            with cleanup_then_reraise() as handled:
                assert handled is original
                cleaned.append("done")
    assert raised.value is original
    assert cleaned == ["done"]
    assert not getattr(raised.value, "__notes__", None)


def test_failing_cleanup_keeps_both_errors(caplog: pytest.LogCaptureFixture) -> None:
    original = ValueError("original")
    cleanup_error = OSError("cleanup broke")
    with pytest.raises(ValueError) as raised:
        try:
            raise original
        except ValueError:
            with cleanup_then_reraise():
                raise cleanup_error
    assert raised.value is original  # the caller still gets the error it needs to handle
    assert raised.value.__notes__ == [
        "while cleaning up after this error, another one occurred: OSError: cleanup broke"
    ]
    assert raised.value.cleanup_errors == [cleanup_error]  # type: ignore[attr-defined]
    assert raised.value.__context__ is None  # the original's own chain is untouched
    record = next(r for r in caplog.records if r.name == "workerflow.reraise")
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and record.exc_info[1] is cleanup_error


def test_keeps_the_original_context() -> None:
    with pytest.raises(KeyError) as raised:
        try:
            try:
                raise RuntimeError("first")
            except RuntimeError:
                raise KeyError("second")
        except KeyError:
            with cleanup_then_reraise():
                raise OSError("cleanup")
    assert isinstance(raised.value.__context__, RuntimeError)


def test_two_failing_cleanups_are_both_kept() -> None:
    original = ValueError("x")
    with pytest.raises(ValueError) as raised:
        try:
            raise original
        except ValueError:
            try:
                with cleanup_then_reraise():
                    raise OSError("one")
            except ValueError:
                with cleanup_then_reraise():
                    raise OSError("two")
    assert [str(e) for e in raised.value.cleanup_errors] == ["one", "two"]  # type: ignore[attr-defined]
    assert len(raised.value.__notes__) == 2


def test_outside_an_except_block_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="inside an except block"):
        with cleanup_then_reraise():
            pass
