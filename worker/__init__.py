"""The worker daemon: task registry, consumer loop, execution pools, heartbeats.

Start one from the command line (``workerflow worker --broker URL tasks``) or from Python::

    from worker import Worker, WorkerSettings

    w = Worker("redis://127.0.0.1:6379/0", ["tasks"], WorkerSettings(concurrency=2))
    w.start()   # background thread; returns once consuming and announced
    ...
    w.stop()    # graceful
"""

from __future__ import annotations

from worker.errors import WorkerError
from worker.registry import Registry
from worker.settings import WorkerSettings
from worker.worker import Worker

__all__ = ["Registry", "Worker", "WorkerError", "WorkerSettings"]
