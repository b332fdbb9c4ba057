"""No-op tasks for the workerflow benchmarks; the client and every worker import this module.

    python -m worker --broker redis://127.0.0.1:6379/12 --namespace NS --concurrency 2 \\
        bench.bench_tasks
"""

from __future__ import annotations

from workerflow import Task


class NoOp(Task):
    """Does nothing and returns None: the cost measured is the framework's alone."""

    def execute(self) -> None:
        return None
