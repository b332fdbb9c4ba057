"""The worker daemon's own error: why a worker cannot start or keep running.

::

    workerflow.errors.WorkerflowError
    └── WorkerError        a task module fails to import, or the broker is unreachable / lost
"""

from __future__ import annotations

from workerflow.errors import WorkerflowError

__all__ = ["WorkerError"]


class WorkerError(WorkerflowError):
    """The worker cannot start or keep running (task module import, broker unreachable or lost)."""
