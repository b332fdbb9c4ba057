"""Tasks the worker subprocesses in the integration and system tests register.

Both the test process (client) and the workers import this module. Append tasks; do not change the
behaviour of existing ones, other tests rely on it.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from workerflow import Failure, Task, task


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


# -- appended for the worker daemon's tests (tests/*/test_worker_*.py) ---------------------------


class AsyncAdd(Task):
    """An ``async def`` task."""

    provides = "sum"

    async def execute(self, a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b


class NotSerializable(Task):
    """Returns an object msgpack cannot carry."""

    def execute(self) -> object:
        return object()


class ExitProcess(Task):
    """Ends the process it runs in at once (a crash, as far as the caller can tell)."""

    def execute(self, code: int = 13) -> None:
        os._exit(code)


class ProgressFlood(Task):
    """Calls update_progress ``count`` times in a tight loop, ending at 1.0."""

    def execute(self, count: int = 10_000) -> int:
        for i in range(count):
            self.update_progress((i + 1) / count)
        return count


class ReportRevert(Task):
    """Its revert returns what it got, so a test can check ``result`` and ``flow_failures``."""

    def execute(self, value: Any = None) -> Any:
        return value

    def revert(self, result: Any, flow_failures: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if isinstance(result, Failure):
            described: Any = {"failure": list(result.exception_type_names), "msg": result.message}
        else:
            described = {"result": result}
        return {
            **described,
            "flow_failures": {name: f.exception_type_name for name, f in flow_failures.items()},
        }


# -- appended for the end-to-end system tests (tests/system/test_*.py) ---------------------------


class SlowPid(Task):
    """Reports the pid it runs in as progress (``details["pid"]``) at once, sleeps ``seconds``,
    then returns that pid: a test learns which worker runs it while it is still running."""

    provides = "pid"

    def execute(self, seconds: float) -> int:
        pid = os.getpid()
        self.update_progress(0.0, pid=pid)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return pid


class Touch(Task):
    """Creates the file at ``marker`` (a side effect a test can look for) and returns its path."""

    def execute(self, marker: str) -> str:
        with open(marker, "a") as f:
            f.write(f"{self.name}\n")
        return marker


class Spin(Task):
    """Burns CPU in pure Python for ``seconds`` (a busy task that still must not starve the worker's
    heartbeats) and returns how many loops it made."""

    provides = "spins"

    def execute(self, seconds: float) -> int:
        deadline = time.monotonic() + seconds
        count = 0
        while time.monotonic() < deadline:
            count += 1
        return count
