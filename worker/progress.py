"""ProgressCoalescer: at most one progress reply per request every ``interval`` seconds.

A task calling ``update_progress`` in a tight loop must not flood the bus. The first update is sent
at once; later ones within ``interval`` only replace a pending value (the latest wins), which a
flusher thread sends when the interval is up, and :meth:`ProgressCoalescer.finish` sends before the
result. All sends for one request happen under one lock, so progress replies leave in order and
never after the request's result.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker.job import Job

__all__ = ["ProgressCoalescer"]

log = logging.getLogger(__name__)

#: Publishes one progress reply; called with the coalescer's lock held.
SendProgress = Callable[[Job, float, dict[str, Any]], None]


@dataclass
class _Track:
    job: Job
    last_sent: float = float("-inf")
    pending: tuple[float, dict[str, Any]] | None = None


class ProgressCoalescer:
    """Rate-limits progress per request; see the module docstring."""

    def __init__(self, send: SendProgress, interval: float = 0.1) -> None:
        self._send = send
        self._interval = interval
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._tracks: dict[str, _Track] = {}
        self._closed = False
        self._thread = threading.Thread(
            target=self._flush_loop, name="worker-progress", daemon=True
        )

    def start(self) -> None:
        """Start the flusher thread."""
        self._thread.start()

    def close(self) -> None:
        """Stop the flusher thread (pending values are dropped)."""
        with self._lock:
            self._closed = True
            self._tracks.clear()
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join(2)

    def begin(self, job: Job) -> None:
        """Start tracking ``job``; updates for untracked jobs are ignored."""
        with self._lock:
            self._tracks[job.request_id] = _Track(job)

    def update(self, job: Job, fraction: float, details: dict[str, Any]) -> None:
        """A new progress value from the task (any thread)."""
        with self._lock:
            track = self._tracks.get(job.request_id)
            if track is None:
                return
            now = time.monotonic()
            if track.pending is None and now - track.last_sent >= self._interval:
                track.last_sent = now
                self._deliver(job, fraction, details)
            else:
                if track.pending is None:
                    self._wake.notify()
                track.pending = (fraction, details)

    def finish(self, job: Job, *, flush: bool = True) -> None:
        """Stop tracking ``job``, first sending its pending value when ``flush``."""
        with self._lock:
            track = self._tracks.pop(job.request_id, None)
            if flush and track is not None and track.pending is not None:
                self._deliver(job, *track.pending)

    def _deliver(self, job: Job, fraction: float, details: dict[str, Any]) -> None:
        try:
            self._send(job, fraction, details)
        except Exception:
            log.exception("request %s: sending progress failed", job.label)

    def _flush_loop(self) -> None:
        with self._lock:
            while not self._closed:
                now = time.monotonic()
                next_due = float("inf")
                for track in list(self._tracks.values()):
                    if track.pending is None:
                        continue
                    due = track.last_sent + self._interval
                    if due <= now:
                        fraction, details = track.pending
                        track.pending = None
                        track.last_sent = now
                        self._deliver(track.job, fraction, details)
                    else:
                        next_due = min(next_due, due)
                timeout = None if next_due == float("inf") else next_due - now
                self._wake.wait(timeout)
