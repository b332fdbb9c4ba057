"""The envelope of the wire protocol: msgpack only (never pickle), versioned, optionally signed.

Every message body on the broker is msgpack of ``[version, kind, body, signature]`` where ``body``
is msgpack of the message's ``to_dict()`` and ``signature`` is HMAC-SHA256 over ``kind + b"\\0" +
body`` (nil when the sender has no secret). Size is checked at the sender and, before any decoding,
at the receiver.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import msgpack

from proxy.errors import EncodeError, InvalidMessage
from proxy.messages import MESSAGE_TYPES, Message, _invalid_for

PROTOCOL_VERSION = 1
#: How kombu labels our bytes, so it never tries to (de)serialise them itself.
CONTENT_TYPE = "application/x-workerflow"
CONTENT_ENCODING = "binary"
DEFAULT_MAX_MESSAGE_SIZE = 1 << 20

_UNPACK_OPTIONS: dict[str, Any] = {"raw": False, "strict_map_key": False, "use_list": True}


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} is not allowed")


class Codec:
    """Encodes messages to envelope bytes and back; signs and verifies when given a secret.

    Stateless apart from its settings, so one codec may be shared by threads.
    """

    def __init__(
        self, *, secret: bytes | None = None, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    ) -> None:
        self.secret = secret
        self.max_message_size = max_message_size

    def _sign(self, kind: str, body: bytes) -> bytes | None:
        if self.secret is None:
            return None
        return hmac.new(self.secret, kind.encode() + b"\0" + body, hashlib.sha256).digest()

    def encode(self, message: Message) -> bytes:
        """The envelope for ``message``; raises ``EncodeError`` naming the path of a value msgpack
        cannot carry, or when the result exceeds ``max_message_size``."""
        kind = message.KIND
        data = message.to_dict()
        try:
            body = msgpack.packb(data, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise EncodeError(f"cannot encode {kind}: {describe_unpackable(data, exc)}") from None
        envelope: bytes = msgpack.packb(
            [PROTOCOL_VERSION, kind, body, self._sign(kind, body)], use_bin_type=True
        )
        if len(envelope) > self.max_message_size:
            raise EncodeError(
                f"{kind} message of {len(envelope)} bytes exceeds max_message_size "
                f"{self.max_message_size}"
            )
        return envelope

    def decode(self, data: bytes) -> Message:
        """The message in envelope ``data``; raises ``InvalidMessage`` with the reason (and, when
        they could be read, the request id and reply address) on anything wrong. Never raises
        anything else for any input."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidMessage(f"message body is {type(data).__name__}, not bytes")
        if len(data) > self.max_message_size:
            raise InvalidMessage(
                f"message of {len(data)} bytes exceeds max_message_size {self.max_message_size}"
            )
        try:
            envelope = msgpack.unpackb(data, ext_hook=_no_ext, **_UNPACK_OPTIONS)
        except Exception as exc:  # msgpack raises many types on garbage
            raise InvalidMessage(f"not a msgpack envelope: {type(exc).__name__}: {exc}") from None
        if not isinstance(envelope, list) or len(envelope) != 4:
            raise InvalidMessage("not a workerflow envelope (expected a 4-element array)")
        version, kind, body, signature = envelope
        if version != PROTOCOL_VERSION or isinstance(version, bool):
            raise InvalidMessage(
                f"unsupported protocol version {version!r} (this side speaks {PROTOCOL_VERSION})"
            )
        cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise InvalidMessage(f"unknown message kind {kind!r}")
        if not isinstance(body, bytes) or not (signature is None or isinstance(signature, bytes)):
            raise InvalidMessage("malformed envelope: body must be bytes, signature bytes or nil")
        try:
            fields = msgpack.unpackb(body, ext_hook=_no_ext, **_UNPACK_OPTIONS)
        except Exception as exc:
            raise InvalidMessage(
                f"{kind} body is not msgpack: {type(exc).__name__}: {exc}"
            ) from None
        if not isinstance(fields, dict):
            raise InvalidMessage(f"{kind} body is not a map")
        if self.secret is not None:
            if signature is None:
                raise _invalid_for(
                    kind, "unsigned message (this receiver requires a signature)", fields
                )
            expected = self._sign(kind, body)
            assert expected is not None
            if not hmac.compare_digest(signature, expected):
                raise _invalid_for(kind, "bad signature", fields)
        message: Message = cls.from_dict(fields)
        return message


def describe_unpackable(value: Any, error: BaseException | None = None) -> str:
    """Say where in ``value`` the first thing msgpack cannot carry is, e.g.
    ``arguments['size'][2]: object of type Foo is not msgpack-safe``."""
    found = _find_unpackable(value, "", set())
    if found is None:
        return f"not msgpack-safe ({error})" if error else "not msgpack-safe"
    path, reason = found
    return f"{path or 'value'}: {reason}"


_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1
_MAX_DEPTH = 500


def _find_unpackable(value: Any, path: str, seen: set[int]) -> tuple[str, str] | None:
    if value is None or isinstance(value, bool | float | str | bytes | bytearray | memoryview):
        return None
    if isinstance(value, int):
        if _INT_MIN <= value <= _INT_MAX:
            return None
        return path, f"integer {value} does not fit in 64 bits"
    if isinstance(value, list | tuple | dict):
        if id(value) in seen:
            return path, "contains itself (a reference cycle)"
        if path.count("[") + path.count(".") > _MAX_DEPTH:
            return path, f"nested deeper than {_MAX_DEPTH} levels"
        seen.add(id(value))
        try:
            if isinstance(value, dict):
                for key, item in value.items():
                    where = _join(path, key)
                    if _find_unpackable(key, where, seen) is not None:
                        return where, f"key of type {type(key).__name__} is not msgpack-safe"
                    found = _find_unpackable(item, where, seen)
                    if found:
                        return found
            else:
                for index, item in enumerate(value):
                    found = _find_unpackable(item, f"{path}[{index}]", seen)
                    if found:
                        return found
        finally:
            seen.discard(id(value))
        return None
    return path, f"object of type {type(value).__name__} is not msgpack-safe"


def _join(path: str, key: Any) -> str:
    # Top-level keys are message field names, shown bare: arguments['size'][2].
    if not path and isinstance(key, str) and key.isidentifier():
        return key
    return f"{path}[{key!r}]"
