"""Notifier: calls registered ``callback(event, details)``; their errors are logged and dropped.

An engine has two: ``engine.notifier`` for flow states (details hold ``"flow"``) and
``engine.atom_notifier`` for task states and progress (details hold ``"task"``; progress events
are ``"PROGRESS"`` with ``"progress"``). Notifications may come from any thread (remote progress
arrives on executor threads), so registration is copy-on-write under a lock and ``notify`` never
blocks on it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from typing import Any

from workerflow.reraise import cleanup_then_reraise

__all__ = ["PROGRESS", "Callback", "Notifier"]

logger = logging.getLogger(__name__)

#: The event name of a progress notification on ``engine.atom_notifier``.
PROGRESS = "PROGRESS"

Callback = Callable[[str, dict[str, Any]], None]


class Notifier:
    """A thread-safe set of ``callback(event, details)`` listeners."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (callback, events or None for all); replaced, never mutated, so notify needs no lock.
        self._listeners: tuple[tuple[Callback, frozenset[str] | None], ...] = ()

    def register(self, *callbacks: Callback, events: Collection[str] | None = None) -> None:
        """Add callbacks, optionally only for some ``events``; all or none are added.

        Raises TypeError for something not callable and ValueError for a callback already
        registered; the callbacks of this call that were added before are removed again.
        """
        added: list[Callback] = []
        selected = None if events is None else frozenset(str(e) for e in events)
        try:
            for callback in callbacks:
                self._add(callback, selected)
                added.append(callback)
        except Exception:
            with cleanup_then_reraise():
                self.deregister(*added)

    def _add(self, callback: Callback, events: frozenset[str] | None) -> None:
        if not callable(callback):
            raise TypeError(f"a listener must be callable, not {type(callback).__name__}")
        with self._lock:
            if any(existing == callback for existing, _ in self._listeners):
                raise ValueError(f"{callback!r} is already registered")
            self._listeners = (*self._listeners, (callback, events))

    def deregister(self, *callbacks: Callback) -> None:
        """Remove callbacks; ones that are not registered are ignored."""
        with self._lock:
            self._listeners = tuple(
                (cb, ev) for cb, ev in self._listeners if not any(cb == c for c in callbacks)
            )

    def is_registered(self, callback: Callback) -> bool:
        """Whether ``callback`` is registered."""
        return any(cb == callback for cb, _ in self._listeners)

    def __len__(self) -> int:
        return len(self._listeners)

    def __bool__(self) -> bool:
        return True

    def notify(self, event: str, details: dict[str, Any]) -> None:
        """Call every listener for ``event``; a listener's exception is logged, never raised."""
        for callback, events in self._listeners:
            if events is not None and event not in events:
                continue
            try:
                callback(event, details)
            except Exception:
                logger.exception("listener %r failed on %s %s; ignored", callback, event, details)
