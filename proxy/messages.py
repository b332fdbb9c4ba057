"""The messages of the wire protocol: frozen dataclasses with ``to_dict()`` / ``from_dict()``.

Validation lives in one place, ``_Message.__post_init__``, driven by each class's ``_FIELDS``
schema, so a message built in Python and one decoded from the wire are checked the same way; a bad
field raises ``InvalidMessage`` naming it. Values are plain msgpack types only; failure dicts are
opaque maps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any, ClassVar, TypeAlias

from proxy.errors import InvalidMessage

#: A field check returns the (possibly normalised) value or raises ValueError saying what it
# expected.
_Check: TypeAlias = Callable[[Any], Any]


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("a string")
    return value


def _id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("a non-empty string")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("an integer")
    return value


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("an integer >= 1")
    return value


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("an integer >= 0")
    return value


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError("a number")
    return float(value)


def _optional(check: _Check) -> _Check:
    def optional(value: Any) -> Any:
        return None if value is None else check(value)

    return optional


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("a boolean")
    return value


def _any(value: Any) -> Any:
    return value


def _map(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError("a map with string keys")
    return value


def _map_of_maps(value: Any) -> dict[str, dict[str, Any]]:
    _map(value)
    if not all(isinstance(v, dict) for v in value.values()):
        raise ValueError("a map of maps")
    return value  # type: ignore[no-any-return]


def _str_list(value: Any) -> list[str]:
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("a list of strings")
    return value


def _one_of(*choices: str) -> _Check:
    def one_of(value: Any) -> str:
        if value not in choices:
            raise ValueError(" or ".join(repr(c) for c in choices))
        return str(value)

    return one_of


def _fraction(value: Any) -> float:
    number = _float(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError("a number from 0.0 to 1.0")
    return number


class _Message:
    """Shared behaviour: schema validation, ``to_dict()`` and ``from_dict()``."""

    KIND: ClassVar[str]
    #: (field name, check) for every field, in declaration order.
    _FIELDS: ClassVar[tuple[tuple[str, _Check], ...]]
    #: Fields that must be present in ``from_dict()`` input (the others have defaults).
    _REQUIRED: ClassVar[frozenset[str]]

    def __post_init__(self) -> None:
        for name, check in self._FIELDS:
            value = getattr(self, name)
            try:
                checked = check(value)
            except ValueError as exc:
                raise self._invalid(
                    f"{self.KIND} field {name!r} must be {exc}, got {_describe(value)}"
                ) from None
            if checked is not value:
                object.__setattr__(self, name, checked)

    def _invalid(self, reason: str) -> InvalidMessage:
        return _invalid_for(self.KIND, reason, self.__dict__)

    def to_dict(self) -> dict[str, Any]:
        """The message as a map of plain values (what the codec packs)."""
        return {name: getattr(self, name) for name, _ in self._FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """Build and validate a message from a decoded map; raises ``InvalidMessage`` naming the
        field.

        Unknown keys are ignored, so a newer sender may add optional fields."""
        if not isinstance(data, Mapping):
            raise InvalidMessage(f"{cls.KIND} body must be a map, got {_describe(data)}")
        missing = [name for name in cls._REQUIRED if name not in data]
        if missing:
            raise _invalid_for(
                cls.KIND, f"{cls.KIND} is missing field(s) {', '.join(sorted(missing))}", data
            )
        return cls(**{name: data[name] for name, _ in cls._FIELDS if name in data})


def _invalid_for(kind: str, reason: str, data: Mapping[str, Any]) -> InvalidMessage:
    """An InvalidMessage carrying the request id and reply address when they can be read."""
    request_id = reply_to = None
    if kind == "request":
        request_id = data.get("id") if isinstance(data.get("id"), str) else None
        reply_to = data.get("reply_to") if isinstance(data.get("reply_to"), str) else None
    elif kind in ("response", "cancel"):
        request_id = data.get("request_id") if isinstance(data.get("request_id"), str) else None
    return InvalidMessage(reason, request_id=request_id or None, reply_to=reply_to or None)


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _schema(cls: type[_Message], checks: dict[str, _Check]) -> None:
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if {f.name for f in fields} != set(checks):
        raise AssertionError(f"schema of {cls.__name__} does not match its fields")
    cls._FIELDS = tuple((f.name, checks[f.name]) for f in fields)
    cls._REQUIRED = frozenset(
        f.name for f in fields if f.default is MISSING and f.default_factory is MISSING
    )


@dataclass(frozen=True)
class Request(_Message):
    """engine -> worker: run one action of one task."""

    KIND: ClassVar[str] = "request"

    id: str
    attempt: int
    task_type: str
    task_name: str
    action: str
    arguments: dict[str, Any]
    reply_to: str
    deadline: float
    execution_timeout: float | None
    result: Any = None
    failure: dict[str, Any] | None = None
    flow_failures: dict[str, dict[str, Any]] = field(default_factory=dict)
    sent_at: float = 0.0


@dataclass(frozen=True)
class Response(_Message):
    """worker -> engine: the request is running, made progress, succeeded or failed."""

    KIND: ClassVar[str] = "response"

    request_id: str
    attempt: int
    worker_id: str
    state: str
    result: Any = None
    failure: dict[str, Any] | None = None
    progress: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Heartbeat(_Message):
    """worker -> everyone on the control exchange: alive, what it serves, how busy it is."""

    KIND: ClassVar[str] = "heartbeat"

    worker_id: str
    hostname: str
    pid: int
    queues: list[str]
    task_types: list[str]
    concurrency: int
    free_slots: int
    interval: float
    running: list[str]
    version: str
    stopping: bool = False
    sent_at: float = 0.0


@dataclass(frozen=True)
class Discover(_Message):
    """engine -> workers: heartbeat now."""

    KIND: ClassVar[str] = "discover"

    sender: str


@dataclass(frozen=True)
class Cancel(_Message):
    """engine -> workers: drop this request if it has not started."""

    KIND: ClassVar[str] = "cancel"

    request_id: str


_schema(
    Request,
    {
        "id": _id,
        "attempt": _positive_int,
        "task_type": _id,
        "task_name": _str,
        "action": _one_of("execute", "revert"),
        "arguments": _map,
        "reply_to": _id,
        "deadline": _float,
        "execution_timeout": _optional(_float),
        "result": _any,
        "failure": _optional(_map),
        "flow_failures": _map_of_maps,
        "sent_at": _float,
    },
)
_schema(
    Response,
    {
        "request_id": _id,
        "attempt": _positive_int,
        "worker_id": _str,
        "state": _one_of("running", "progress", "success", "failure"),
        "result": _any,
        "failure": _optional(_map),
        "progress": _optional(_fraction),
        "details": _map,
    },
)
_schema(
    Heartbeat,
    {
        "worker_id": _id,
        "hostname": _str,
        "pid": _int,
        "queues": _str_list,
        "task_types": _str_list,
        "concurrency": _count,
        "free_slots": _count,
        "interval": _float,
        "running": _str_list,
        "version": _str,
        "stopping": _bool,
        "sent_at": _float,
    },
)
_schema(Discover, {"sender": _str})
_schema(Cancel, {"request_id": _id})

#: Any message of the protocol.
Message: TypeAlias = Request | Response | Heartbeat | Discover | Cancel

#: kind -> class, for the codec.
MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.KIND: cls for cls in (Request, Response, Heartbeat, Discover, Cancel)
}
