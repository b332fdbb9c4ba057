"""Tasks the worker subprocesses in the integration and system tests register.

Both the test process (client) and the workers import this module. Append tasks; do not change the
behaviour of existing ones, other tests rely on it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from workerflow import Task, task


class Add(Task):
    provides = "sum"

    def execute(self, a: int, b: int) -> int:
        return a + b


@task(provides="product")
def multiply(a: int, b: int) -> int:
    return a * b


class Fail(Task):
    """Raises ValueError with the message it is given."""

    def execute(self, message: str = "boom") -> None:
        raise ValueError(message)


class Sleep(Task):
    """Sleeps ``seconds`` in small steps, reporting progress after each step."""

    provides = "slept"

    def execute(self, seconds: float, steps: int = 5) -> float:
        for i in range(steps):
            time.sleep(seconds / steps)
            self.update_progress((i + 1) / steps, step=i + 1)
        return seconds


class Pid(Task):
    """Returns the pid of the process it ran in."""

    provides = "pid"

    def execute(self) -> int:
        return os.getpid()


class RecordRevert(Task):
    """Appends 'execute:<name>' / 'revert:<name>' lines to the file at ``journal``."""

    def execute(self, journal: str) -> str:
        with open(journal, "a") as f:
            f.write(f"execute:{self.name}\n")
        return self.name

    def revert(self, journal: str, result: Any, **kwargs: Any) -> None:
        with open(journal, "a") as f:
            f.write(f"revert:{self.name}\n")
