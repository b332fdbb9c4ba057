"""The engine side's view of live workers, built from their heartbeats.

Workers heartbeat on the control fanout every ``interval`` seconds, listing the queues they
consume, the task types they run and the requests they are running. :class:`WorkerDirectory` keeps
the latest of these per worker and answers two questions: does a live worker serve this task type on
this queue (discovery), and when did we last hear from a given worker (liveness, for
``WorkerLost``). Times are the receiver's ``time.monotonic()``, never the sender's clock, so clock
skew between machines cannot matter.

Not thread-safe: the request tracker that owns it serializes access.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["WorkerDirectory", "WorkerInfo"]


@dataclass(slots=True)
class WorkerInfo:
    """What the latest heartbeat (or response) told us about one worker."""

    worker_id: str
    queues: frozenset[str]
    task_types: frozenset[str]
    interval: float
    last_seen: float
    stopping: bool = False

    def serves(self, task_type: str, queue: str) -> bool:
        """Whether this worker consumes ``queue`` and runs ``task_type`` (liveness aside)."""
        return not self.stopping and queue in self.queues and task_type in self.task_types


class WorkerDirectory:
    """Live workers by id, from heartbeats; one silent for ``heartbeat_timeout`` is not live."""

    def __init__(self, heartbeat_timeout: float) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        self._workers: dict[str, WorkerInfo] = {}

    def __len__(self) -> int:
        return len(self._workers)

    def update(
        self,
        worker_id: str,
        *,
        queues: Iterable[str],
        task_types: Iterable[str],
        interval: float,
        stopping: bool,
        now: float,
    ) -> bool:
        """Record a heartbeat; True when the worker may now serve something it could not before.

        That is: it is new, it came back after being silent too long, it stopped stopping, or its
        queues or task types changed. The caller then re-checks requests waiting for a worker.
        """
        info = self._workers.get(worker_id)
        queue_set = frozenset(queues)
        type_set = frozenset(task_types)
        if info is None:
            self._workers[worker_id] = WorkerInfo(
                worker_id, queue_set, type_set, interval, now, stopping
            )
            return not stopping
        gained = (
            not self._alive(info, now)
            or (info.stopping and not stopping)
            or not queue_set <= info.queues
            or not type_set <= info.task_types
        ) and not stopping
        info.queues = queue_set
        info.task_types = type_set
        info.interval = interval
        info.stopping = stopping
        info.last_seen = now
        return gained

    def saw(self, worker_id: str, now: float) -> None:
        """Any message from a worker proves it alive; a new one is remembered serving nothing."""
        info = self._workers.get(worker_id)
        if info is None:
            self._workers[worker_id] = WorkerInfo(worker_id, frozenset(), frozenset(), 1.0, now)
        elif now > info.last_seen:
            info.last_seen = now

    def get(self, worker_id: str) -> WorkerInfo | None:
        """The worker's record, live or not."""
        return self._workers.get(worker_id)

    def last_seen(self, worker_id: str) -> float | None:
        """When we last heard from the worker (monotonic), or None if never."""
        info = self._workers.get(worker_id)
        return None if info is None else info.last_seen

    def is_alive(self, worker_id: str, now: float) -> bool:
        """Whether the worker was heard from within ``heartbeat_timeout``."""
        info = self._workers.get(worker_id)
        return info is not None and self._alive(info, now)

    def serves(self, task_type: str, queue: str, now: float) -> bool:
        """Whether some live, not-stopping worker runs ``task_type`` from ``queue``."""
        return any(
            info.serves(task_type, queue) and self._alive(info, now)
            for info in self._workers.values()
        )

    def live(self, now: float) -> list[WorkerInfo]:
        """Every worker heard from within ``heartbeat_timeout``."""
        return [info for info in self._workers.values() if self._alive(info, now)]

    def forget(self, worker_id: str) -> None:
        """Drop a worker (declared lost); a later heartbeat brings it back."""
        self._workers.pop(worker_id, None)

    def prune(self, now: float) -> None:
        """Forget workers silent much longer than the timeout, so the map cannot grow forever."""
        horizon = now - 3 * self.heartbeat_timeout
        for worker_id in [w for w, info in self._workers.items() if info.last_seen < horizon]:
            del self._workers[worker_id]

    def _alive(self, info: WorkerInfo, now: float) -> bool:
        return now - info.last_seen < self.heartbeat_timeout
