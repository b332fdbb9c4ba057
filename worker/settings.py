"""WorkerSettings: how one worker daemon consumes, runs and reports (a small frozen dataclass)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["PoolKind", "WorkerSettings"]

PoolKind = Literal["threads", "processes"]
POOL_KINDS: tuple[PoolKind, ...] = ("threads", "processes")


def _cpu_count() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a :class:`~worker.Worker` needs besides the broker URL and the task modules.

    ``queues`` are worker queue names (``default``), not the full ``NS.requests.Q`` names.
    ``secret`` enables HMAC signing: such a worker refuses unsigned or badly signed requests.
    ``grace_period`` is how long in-flight work may run after SIGTERM before it is failed with
    ``WorkerLost``.
    """

    namespace: str = "workerflow"
    queues: tuple[str, ...] = ("default",)
    concurrency: int = field(default_factory=_cpu_count)
    pool: PoolKind = "threads"
    secret: str | bytes | None = None
    heartbeat_interval: float = 1.0
    grace_period: float = 30.0
    max_message_size: int = 1 << 20

    def __post_init__(self) -> None:
        if isinstance(self.queues, str):
            raise TypeError("queues must be a sequence of queue names, not one string")
        # Frozen: normalise a list given by a caller into the tuple the field promises.
        object.__setattr__(self, "queues", tuple(self.queues))
        if not self.namespace:
            raise ValueError("namespace must not be empty")
        if not self.queues or not all(isinstance(q, str) and q for q in self.queues):
            raise ValueError(f"queues must be non-empty names, got {self.queues!r}")
        if len(set(self.queues)) != len(self.queues):
            raise ValueError(f"queues are listed twice: {self.queues!r}")
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ValueError(f"concurrency must be a positive integer, got {self.concurrency!r}")
        if self.pool not in POOL_KINDS:
            raise ValueError(f"pool must be one of {POOL_KINDS}, got {self.pool!r}")
        if self.secret is not None and not isinstance(self.secret, (str, bytes)):
            raise TypeError("secret must be str, bytes or None")
        if self.secret is not None and not self.secret:
            raise ValueError("secret must not be empty (use None for no signing)")
        if self.heartbeat_interval <= 0:
            raise ValueError(f"heartbeat_interval must be > 0, got {self.heartbeat_interval!r}")
        if self.grace_period < 0:
            raise ValueError(f"grace_period must be >= 0, got {self.grace_period!r}")
        if self.max_message_size < 1024:
            raise ValueError(f"max_message_size must be >= 1024, got {self.max_message_size!r}")

    @property
    def secret_bytes(self) -> bytes | None:
        """The secret as bytes (a str is UTF-8 encoded), or None."""
        if isinstance(self.secret, str):
            return self.secret.encode()
        return self.secret
