"""Failure: a pickle-free record of an exception that can cross processes and the wire.

A Failure keeps what is needed to explain and re-raise an error anywhere: the exception's type names
(its MRO, most specific first), its message, its traceback text and its cause. ``to_dict()`` gives
plain msgpack-safe values; ``from_dict()`` validates them. The live exception is kept only on the
side that caught it, so ``reraise()`` raises the very same object locally and a rebuilt one
elsewhere.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from workerflow.errors import RemoteError, SerializationError

__all__ = ["Failure"]

FORMAT_VERSION = 1
_MAX_CAUSE_DEPTH = 8


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class; the spelling every type name in a Failure uses."""
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True, eq=False)
class Failure:
    """What went wrong, as data: type names, message, traceback text and cause."""

    exception_type_names: tuple[str, ...]
    message: str
    traceback_text: str = ""
    cause: Failure | None = None
    exception: BaseException | None = field(default=None, repr=False)

    @classmethod
    def from_exception(cls, exc: BaseException, *, _depth: int = 0) -> Failure:
        """Capture ``exc`` (and its cause chain) with the traceback it carries."""
        remote = getattr(exc, "failure", None)
        if isinstance(exc, RemoteError) and isinstance(remote, Failure):
            # A RemoteError stands in for a remote exception: keep the remote record, not the proxy.
            return remote
        names = tuple(qualified_name(k) for k in type(exc).__mro__ if issubclass(k, BaseException))
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, chain=False))
        chained = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        cause = None
        if chained is not None and _depth < _MAX_CAUSE_DEPTH:
            cause = cls.from_exception(chained, _depth=_depth + 1)
        return cls(names, str(exc), text, cause, exc)

    @classmethod
    def current(cls) -> Failure:
        """Capture the exception being handled (call inside ``except``)."""
        exc = sys.exc_info()[1]
        if exc is None:
            raise RuntimeError("Failure.current() called outside an except block")
        return cls.from_exception(exc)

    @property
    def exception_type_name(self) -> str:
        """The most specific type name, e.g. ``builtins.ValueError``."""
        return self.exception_type_names[0]

    def check(self, *types: type[BaseException] | str) -> type[BaseException] | str | None:
        """Return the first of ``types`` this failure is an instance of, else None.

        Types may be classes or qualified names, so a client can check a remote type it cannot
        import.
        """
        for expected in types:
            name = expected if isinstance(expected, str) else qualified_name(expected)
            if name in self.exception_type_names:
                return expected
        return None

    def to_exception(self) -> BaseException:
        """The exception this failure stands for.

        The captured object when there is one; else a new instance of the original type when that
        type is already imported here and can be built from a message; else a
        :class:`RemoteError`. Type names from the wire never trigger an import.
        """
        if self.exception is not None:
            return self.exception
        exc = self._rebuild()
        if exc is None:
            exc = RemoteError(self)
        else:
            exc.failure = self  # type: ignore[attr-defined]
        if self.traceback_text:
            exc.add_note("remote traceback:\n" + self.traceback_text.rstrip())
        if self.cause is not None:
            exc.__cause__ = self.cause.to_exception()
        return exc

    def reraise(self) -> NoReturn:
        """Raise the exception this failure stands for (see :meth:`to_exception`)."""
        raise self.to_exception()

    def _rebuild(self) -> BaseException | None:
        module_name, _, qualname = self.exception_type_name.rpartition(".")
        module = sys.modules.get(module_name)
        if module is None:
            # Nested classes: the module part may itself hold dots from the qualname.
            for name, mod in sys.modules.items():
                if mod is not None and self.exception_type_name.startswith(name + "."):
                    module, qualname = mod, self.exception_type_name[len(name) + 1 :]
                    break
        if module is None:
            return None
        obj: Any = module
        for part in qualname.split("."):
            obj = getattr(obj, part, None)
        if not (isinstance(obj, type) and issubclass(obj, Exception)):
            return None
        try:
            exc = obj(self.message)
        except Exception:
            return None
        if str(exc) != self.message:
            return None
        return exc

    def to_dict(self) -> dict[str, Any]:
        """Plain, msgpack-safe values; the inverse of :meth:`from_dict`."""
        return {
            "version": FORMAT_VERSION,
            "exception_type_names": list(self.exception_type_names),
            "message": self.message,
            "traceback_text": self.traceback_text,
            "cause": None if self.cause is None else self.cause.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Failure:
        """Rebuild a Failure from :meth:`to_dict` output, checking every field."""
        if not isinstance(data, Mapping):
            raise SerializationError(f"a failure must be a mapping, not {type(data).__name__}")
        if data.get("version") != FORMAT_VERSION:
            raise SerializationError(
                f"unsupported failure version {data.get('version')!r} (expected {FORMAT_VERSION})"
            )
        names = data.get("exception_type_names")
        if (
            not isinstance(names, (list, tuple))
            or not names
            or not all(isinstance(n, str) for n in names)
        ):
            raise SerializationError(
                "failure 'exception_type_names' must be a non-empty list of strings"
            )
        message = data.get("message")
        text = data.get("traceback_text", "")
        if not isinstance(message, str) or not isinstance(text, str):
            raise SerializationError("failure 'message' and 'traceback_text' must be strings")
        cause = data.get("cause")
        return cls(tuple(names), message, text, None if cause is None else cls.from_dict(cause))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Failure):
            return NotImplemented
        return (
            self.exception_type_names == other.exception_type_names
            and self.message == other.message
            and self.traceback_text == other.traceback_text
            and self.cause == other.cause
        )

    def __hash__(self) -> int:
        return hash((self.exception_type_names, self.message))

    def __str__(self) -> str:
        short = self.exception_type_name.rpartition(".")[2]
        return f"{short}: {self.message}" if self.message else short
