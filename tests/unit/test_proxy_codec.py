"""The envelope: msgpack only, versioned, signed, size-limited; bad input is InvalidMessage."""

from __future__ import annotations

import pickle
from typing import Any

import msgpack
import pytest

from proxy.codec import PROTOCOL_VERSION, Codec, describe_unpackable
from proxy.errors import EncodeError, InvalidMessage
from proxy.messages import Cancel, Discover, Request, Response


def request(**arguments: Any) -> Request:
    return Request(
        id="r1", attempt=1, task_type="m:T", task_name="t", action="execute",
        arguments=arguments, reply_to="ns.replies.e", deadline=100.0, execution_timeout=2.0,
    )  # fmt: skip


class Foo:
    pass


def test_round_trip_and_tuples_arrive_as_lists() -> None:
    codec = Codec()
    data = codec.encode(request(size=(1, 2), blob=b"\x00\xff", text="é"))
    decoded = codec.decode(data)
    assert isinstance(decoded, Request)
    assert decoded.arguments == {"size": [1, 2], "blob": b"\x00\xff", "text": "é"}


def test_envelope_layout() -> None:
    data = Codec(secret=b"k").encode(Cancel("r1"))
    version, kind, body, signature = msgpack.unpackb(data, raw=False)
    assert (version, kind) == (PROTOCOL_VERSION, "cancel")
    assert msgpack.unpackb(body, raw=False) == {"request_id": "r1"}
    assert isinstance(signature, bytes) and len(signature) == 32
    assert msgpack.unpackb(Codec().encode(Cancel("r1")), raw=False)[3] is None


def test_signed_message_accepted() -> None:
    codec = Codec(secret=b"shared")
    assert codec.decode(codec.encode(Discover("c"))) == Discover("c")


def test_unsigned_message_rejected_by_a_receiver_with_a_secret() -> None:
    data = Codec().encode(request())
    with pytest.raises(InvalidMessage, match="unsigned") as info:
        Codec(secret=b"shared").decode(data)
    assert (info.value.request_id, info.value.reply_to) == ("r1", "ns.replies.e")


def test_bad_signature_rejected() -> None:
    data = Codec(secret=b"other").encode(request())
    with pytest.raises(InvalidMessage, match="bad signature") as info:
        Codec(secret=b"shared").decode(data)
    assert info.value.request_id == "r1"


def test_tampered_body_rejected() -> None:
    version, kind, _body, signature = msgpack.unpackb(
        Codec(secret=b"k").encode(Cancel("r1")), raw=False
    )
    forged = msgpack.packb([version, kind, msgpack.packb({"request_id": "r2"}), signature])
    with pytest.raises(InvalidMessage, match="bad signature"):
        Codec(secret=b"k").decode(forged)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not a msgpack envelope"),
        (b"\xc1garbage", "not a msgpack envelope"),
        (pickle.dumps({"a": 1}), "not a msgpack envelope|not a workerflow envelope"),
        (msgpack.packb({"a": 1}), "not a workerflow envelope"),
        (msgpack.packb([2, "cancel", msgpack.packb({"request_id": "r"}), None]),
         "unsupported protocol version 2"),
        (msgpack.packb([True, "cancel", msgpack.packb({"request_id": "r"}), None]),
         "unsupported protocol version"),
        (msgpack.packb([1, "launch", b"", None]), "unknown message kind"),
        (msgpack.packb([1, "cancel", "text", None]), "malformed envelope"),
        (msgpack.packb([1, "cancel", b"\xc1", None]), "body is not msgpack"),
        (msgpack.packb([1, "cancel", msgpack.packb([1]), None]), "body is not a map"),
        (msgpack.packb([1, "cancel", msgpack.packb({}), None]), "missing field"),
        (msgpack.packb([1, "cancel", msgpack.packb(msgpack.ExtType(5, b"x")), None]),
         "ext type 5 is not allowed"),
    ],
)  # fmt: skip
def test_bad_input_is_invalid_message(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage, match=reason):
        Codec().decode(data)


def test_non_bytes_input() -> None:
    with pytest.raises(InvalidMessage, match="not bytes"):
        Codec().decode("text")  # type: ignore[arg-type]


def test_oversized_refused_at_sender() -> None:
    codec = Codec(max_message_size=1000)
    with pytest.raises(EncodeError, match=r"request message of \d+ bytes exceeds max_message_size"):
        codec.encode(request(blob=b"x" * 2000))


def test_oversized_rejected_at_receiver_before_decoding() -> None:
    data = Codec().encode(request(blob=b"x" * 2000))
    with pytest.raises(InvalidMessage, match="exceeds max_message_size 1000"):
        Codec(max_message_size=1000).decode(data)
    # a size check only: garbage of the same size gets the same reason, not a decoding error
    with pytest.raises(InvalidMessage, match="exceeds"):
        Codec(max_message_size=10).decode(b"\xc1" * 11)


def test_encode_error_names_the_path() -> None:
    with pytest.raises(EncodeError) as info:
        Codec().encode(request(size=[1, 2, Foo()]))
    assert "arguments['size'][2]: object of type Foo is not msgpack-safe" in str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": {"b": [1, {2}]}}, "a['b'][1]: object of type set"),
        ({"a": 1 << 70}, "a: integer"),
        ({(1, Foo()): 1}, "key of type tuple"),
    ],
)
def test_describe_unpackable(value: Any, expected: str) -> None:
    assert expected in describe_unpackable(value)


def test_reference_cycle_is_an_encode_error() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(EncodeError, match="reference cycle"):
        Codec().encode(request(c=cyclic))


def test_result_of_any_plain_type() -> None:
    codec = Codec()
    response = Response("r1", 1, "w", "success", result={"nested": [None, True, 1.5, b"b"]})
    assert codec.decode(codec.encode(response)) == response
