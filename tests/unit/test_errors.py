"""One exception root, and messages that name what went wrong."""

from __future__ import annotations

import inspect

from workerflow import errors
from workerflow.failure import Failure


def test_every_error_derives_from_the_root_and_is_in_the_tree() -> None:
    classes = [
        obj
        for obj in vars(errors).values()
        if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == errors.__name__
    ]
    assert len(classes) >= 17
    for cls in classes:
        assert issubclass(cls, errors.WorkerflowError)
        assert cls.__name__ in (errors.__doc__ or ""), cls
        assert cls.__doc__


def test_messages_name_things() -> None:
    assert "'t' needs 'a', 'b'" in str(errors.MissingInput("t", ["a", "b"]))
    assert "a -> b -> a" in str(errors.CyclicDependency(["a", "b", "a"]))
    text = str(errors.AmbiguousProvider("x", ["p", "q"], "c"))
    assert "'c' needs 'x'" in text and "'p'" in text and "'q'" in text
    assert "'n'" in str(errors.DuplicateName("n"))
    assert issubclass(errors.WorkerLost, errors.RemoteFault)


def test_wrapped_failure_holds_all() -> None:
    failures = [Failure(("builtins.ValueError",), "a"), Failure(("builtins.KeyError",), "b")]
    wrapped = errors.WrappedFailure(failures)
    assert list(wrapped) == failures and len(wrapped) == 2
    assert "ValueError: a" in str(wrapped) and "KeyError: b" in str(wrapped)
