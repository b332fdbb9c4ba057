"""Bus settings: a small frozen dataclass parsed from a broker URL.

``BusSettings.from_url("redis://localhost:6379/0?namespace=app&retry_deadline=10")`` validates the
scheme and every option; an unknown option is an error, never silently ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from proxy import names

#: Broker URL schemes the bus supports.
SCHEMES = ("redis", "rediss", "amqp", "memory")

#: Options that may be given as URL query parameters, with the type each is parsed to.
_URL_OPTIONS: dict[str, type] = {
    "namespace": str,
    "secret": str,
    "max_message_size": int,
    "connect_timeout": float,
    "retry_max_delay": float,
    "retry_deadline": float,
}
#: Query parameters passed through to the Redis client untouched (TLS settings of ``rediss://``).
_PASSTHROUGH_PREFIX = "ssl_"


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, fit for logs and error messages."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    netloc = f"{user}:***@{host}{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class BusSettings:
    """Where the broker is and how the bus talks to it.

    ``secret`` (bytes; a str is encoded as UTF-8) turns on HMAC-SHA256 signing: every message sent
    is signed and every message received must carry a valid signature. ``retry_deadline`` bounds
    how long connecting, publishing and draining keep retrying a lost connection before
    ``BrokerUnavailable``.
    """

    url: str = field(repr=False)
    namespace: str = names.DEFAULT_NAMESPACE
    secret: bytes | None = field(default=None, repr=False)
    max_message_size: int = 1 << 20
    connect_timeout: float = 5.0
    retry_max_delay: float = 2.0
    retry_deadline: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.url, str):
            raise TypeError(f"url must be a str, got {type(self.url).__name__}")
        scheme = urlsplit(self.url).scheme
        if scheme not in SCHEMES:
            raise ValueError(
                f"unsupported broker URL scheme {scheme!r} in {redact_url(self.url)!r}; "
                f"expected one of {', '.join(SCHEMES)}"
            )
        names.control_exchange(self.namespace)  # validates the namespace
        if isinstance(self.secret, str):
            object.__setattr__(self, "secret", self.secret.encode())
        if self.secret is not None and not (isinstance(self.secret, bytes) and self.secret):
            raise ValueError("secret must be non-empty bytes or None")
        if isinstance(self.max_message_size, bool) or not isinstance(self.max_message_size, int):
            raise TypeError("max_message_size must be an int")
        if self.max_message_size <= 0:
            raise ValueError("max_message_size must be positive")
        for name in ("connect_timeout", "retry_max_delay", "retry_deadline"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
            object.__setattr__(self, name, float(value))

    def __repr__(self) -> str:
        return (
            f"BusSettings({self.safe_url!r}, namespace={self.namespace!r}, "
            f"secret={'set' if self.secret else None}, max_message_size={self.max_message_size}, "
            f"connect_timeout={self.connect_timeout}, retry_max_delay={self.retry_max_delay}, "
            f"retry_deadline={self.retry_deadline})"
        )

    @property
    def scheme(self) -> str:
        """The URL scheme: ``redis``, ``rediss``, ``amqp`` or ``memory``."""
        return urlsplit(self.url).scheme

    @property
    def safe_url(self) -> str:
        """The URL without its password, for logs and error messages."""
        return redact_url(self.url)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> BusSettings:
        """Parse ``url``: the scheme is validated, bus options may be given as query parameters
        (``?namespace=app&retry_deadline=10``), and keyword arguments override them. Query
        parameters starting with ``ssl_`` are passed to the Redis client; any other unknown option
        is an error."""
        unknown = sorted(set(kwargs) - {f.name for f in dataclasses.fields(cls)} - {"url"})
        if unknown:
            raise TypeError(
                f"unknown bus option(s) {', '.join(unknown)}; known: {', '.join(_URL_OPTIONS)}"
            )
        if "url" in kwargs:
            raise TypeError("from_url() takes the URL positionally only")
        parts = urlsplit(url)
        options: dict[str, Any] = {}
        kept: list[tuple[str, str]] = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key.startswith(_PASSTHROUGH_PREFIX):
                kept.append((key, value))
                continue
            if key not in _URL_OPTIONS:
                raise ValueError(
                    f"unknown option {key!r} in broker URL {redact_url(url)!r}; "
                    f"known: {', '.join(_URL_OPTIONS)}"
                )
            try:
                options[key] = _URL_OPTIONS[key](value)
            except ValueError:
                raise ValueError(
                    f"option {key}={value!r} in broker URL {redact_url(url)!r} is not a valid "
                    f"{_URL_OPTIONS[key].__name__}"
                ) from None
        options.update(kwargs)
        clean = url.split("?", 1)[0]
        if kept:
            clean = f"{clean}?{urlencode(kept)}"
        return cls(clean, **options)
