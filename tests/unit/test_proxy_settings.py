"""BusSettings and names: URL parsing, validation, redaction."""

from __future__ import annotations

import pytest

from proxy import names
from proxy.settings import BusSettings, redact_url


@pytest.mark.parametrize(
    "url",
    ["redis://localhost:6379/0", "rediss://h:6380/1", "amqp://guest:guest@h:5672//", "memory://"],
)
def test_supported_schemes(url: str) -> None:
    settings = BusSettings.from_url(url)
    assert settings.url == url
    assert settings.namespace == "workerflow"
    assert settings.max_message_size == 1 << 20


@pytest.mark.parametrize("url", ["http://localhost", "sqs://", "localhost:6379", ""])
def test_unsupported_scheme_is_an_error(url: str) -> None:
    with pytest.raises(ValueError, match="unsupported broker URL scheme"):
        BusSettings.from_url(url)


def test_query_options_are_parsed_and_removed_from_the_url() -> None:
    settings = BusSettings.from_url(
        "redis://h:6379/2?namespace=app&retry_deadline=3&max_message_size=1000&ssl_cert_reqs=none"
    )
    assert settings.namespace == "app"
    assert settings.retry_deadline == 3.0
    assert settings.max_message_size == 1000
    assert settings.url == "redis://h:6379/2?ssl_cert_reqs=none"


def test_keyword_arguments_override_query_options() -> None:
    settings = BusSettings.from_url("redis://h/0?namespace=a", namespace="b", secret="k")
    assert settings.namespace == "b"
    assert settings.secret == b"k"


def test_unknown_query_option_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"unknown option 'colour'.*known: namespace"):
        BusSettings.from_url("redis://h/0?colour=blue")


def test_unknown_keyword_option_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match=r"unknown bus option.*colour"):
        BusSettings.from_url("redis://h/0", colour="blue")


def test_bad_option_value() -> None:
    with pytest.raises(ValueError, match=r"retry_deadline='soon'.*not a valid float"):
        BusSettings.from_url("redis://h/0?retry_deadline=soon")
    with pytest.raises(ValueError, match="retry_deadline must be a positive number"):
        BusSettings("redis://h/0", retry_deadline=0)
    with pytest.raises(ValueError, match="max_message_size must be positive"):
        BusSettings("redis://h/0", max_message_size=0)
    with pytest.raises(ValueError, match="namespace"):
        BusSettings("redis://h/0", namespace="a b")


def test_settings_are_frozen() -> None:
    settings = BusSettings("memory://")
    with pytest.raises(AttributeError):
        settings.namespace = "x"  # type: ignore[misc]


def test_password_never_shows() -> None:
    settings = BusSettings.from_url("amqp://user:s3cret@host:5672//", secret=b"key")
    assert "s3cret" not in repr(settings)
    assert "key" not in repr(settings)
    assert settings.safe_url == "amqp://user:***@host:5672//"
    assert redact_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"


def test_names_are_built_from_the_namespace() -> None:
    assert names.request_queue("ns") == "ns.requests.default"
    assert names.request_queue("ns", "gpu") == "ns.requests.gpu"
    assert names.reply_queue("ns", "e1") == "ns.replies.e1"
    assert names.control_exchange("ns") == "ns.control"
    assert names.control_queue("ns", "w1") == "ns.control.w1"
    assert names.kombu_key("ns", "unacked").startswith("ns.")
    for bad in ("", "a b", "a*b", "a#b"):
        with pytest.raises(ValueError):
            names.request_queue("ns", bad)
