"""Measurement helpers shared by bench/throughput.py and bench/latency.py.

What a measured window records, for every system alike:

- wall time, from the first submit to the last result;
- Redis commands: the diff of ``INFO commandstats`` over the window. Redis cannot split this per
  database, so every client of that server counts; the probe's own ``INFO``/``CLIENT LIST``
  calls are left out, and :meth:`RedisProbe.foreign_clients` names other clients that were
  active meanwhile;
- CPU time of every process involved: this client process (all its threads), each worker process
  and all its descendants (e.g. Celery's prefork children), and redis-server, read from the
  kernel's per-process CPU clocks (nanoseconds, exited threads included);
- per-task round trips, when the system reports them (latency runs).

Processes are started in their own session so that stopping one also stops the children it forked;
every wait has a deadline.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import redis

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: Commands the measuring side itself sends; they are not the systems' traffic.
PROBE_COMMANDS = frozenset({"info", "client|list", "ping"})


# -- small utilities ---------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> Any:
    """Poll ``predicate`` until it returns something truthy; raise TimeoutError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def run_bounded(function: Callable[[], Any], timeout: float, what: str) -> Any:
    """Call ``function`` in a daemon thread and return its result; TimeoutError after ``timeout``.

    For calls that take no deadline of their own (an engine's ``run()``): the benchmark then fails
    and cleans up instead of hanging; the abandoned thread dies with the process.
    """
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["value"] = function()
        except BaseException as exc:  # handed to the caller's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=call, name=f"bounded {what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"{what} did not finish within {timeout:.0f} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (``fraction`` 0.5 is the median, 0.99 is p99)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def run_id() -> str:
    """A short random id that names this run's queues, keys and namespaces."""
    return uuid.uuid4().hex[:8]


def subprocess_env() -> dict[str, str]:
    """Environment for worker processes: the repo root importable (for ``bench.*`` modules)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- CPU time from /proc -----------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; everything after its closing ")" is regular.
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds consumed so far by process ``pid`` (all its threads, live or exited), or None.

    Read from the kernel's per-process CPU clock (what ``clock_getcpuclockid(3)`` returns:
    ``(~pid << 3) | 2``), which counts nanoseconds and includes threads that have already exited;
    ``/proc/<pid>/stat``'s utime + stime, the fallback, count in 10 ms ticks.
    """
    try:
        return time.clock_gettime(((~pid) << 3) | 2)
    except OSError:
        pass
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # After the name: state(0) ppid(1) ... utime(11) stime(12).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_tree(roots: Iterable[int]) -> set[int]:
    """``roots`` and every live descendant of them."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    found: set[int] = set()
    pending = list(roots)
    while pending:
        pid = pending.pop()
        if pid not in found:
            found.add(pid)
            pending.extend(parents.get(pid, ()))
    return found


class CpuClock:
    """CPU seconds of named groups of processes; :meth:`since` diffs two readings per group.

    A process that exits between two readings loses the CPU it spent after the first one; the
    benchmarks keep their worker processes alive through a window (threads may come and go).
    """

    def __init__(self, groups: dict[str, Callable[[], Iterable[int]]]) -> None:
        self._groups = groups

    def read(self) -> dict[str, dict[int, float]]:
        reading: dict[str, dict[int, float]] = {}
        for group, pids in self._groups.items():
            reading[group] = {}
            for pid in pids():
                seconds = cpu_seconds(pid)
                if seconds is not None:
                    reading[group][pid] = seconds
        return reading

    @staticmethod
    def since(
        before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]
    ) -> dict[str, float]:
        return {
            group: sum(s - before.get(group, {}).get(pid, 0.0) for pid, s in seconds.items())
            for group, seconds in after.items()
        }


# -- Redis -------------------------------------------------------------------------------------


class RedisProbe:
    """A separate connection to the benchmark's Redis that reads server counters."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=10)
        self.client.ping()
        self.client_id = int(self.client.client_id())

    def commands(self) -> Counter[str]:
        """Calls per command since the server started, without the probe's own commands."""
        stats = self.client.info("commandstats")
        calls: Counter[str] = Counter()
        for key, value in stats.items():
            name = key.removeprefix("cmdstat_")
            if name not in PROBE_COMMANDS:
                calls[name] = int(value["calls"])
        return calls

    def server_pid(self) -> int | None:
        """redis-server's pid when it runs on this machine (so its CPU can be read), else None."""
        pid = int(self.client.info("server")["process_id"])
        return pid if Path(f"/proc/{pid}/stat").exists() else None

    def foreign_clients(self, ours: Callable[[dict[str, Any]], bool], window: float) -> list[str]:
        """Clients active within the last ``window`` seconds that ``ours`` does not claim."""
        found = []
        for client in self.client.client_list():
            if int(client["id"]) == self.client_id or ours(client):
                continue
            if float(client["idle"]) <= window:
                found.append(f"{client['addr']} db={client['db']} cmd={client['cmd']}")
        return found

    def delete_matching(self, pattern: str) -> int:
        """Delete every key matching ``pattern`` in the probe's database; returns how many."""
        deleted = 0
        batch: list[bytes] = []
        for key in self.client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(self.client.unlink(*batch))
                batch.clear()
        if batch:
            deleted += int(self.client.unlink(*batch))
        return deleted

    def close(self) -> None:
        self.client.close()


class PrivateRedis:
    """A throw-away redis-server on a free port, for figures no other client can disturb."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.directory = tempfile.mkdtemp(prefix="wf-bench-redis-")
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.directory],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

        def answers() -> bool:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return True
            return False

        wait_until(answers, 10, f"private redis-server on port {self.port}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)


# -- worker processes --------------------------------------------------------------------------


class Daemon:
    """A worker subprocess in its own session, logging to a file, stopped with its children."""

    def __init__(self, command: Sequence[str], log_dir: Path, label: str) -> None:
        self.command = list(command)
        self.label = label
        self.log_path = log_dir / f"{label}.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            self.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=subprocess_env(),
            cwd=ROOT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, text: str, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.label} exited with {self.process.returncode} before logging {text!r}; "
                    f"command {' '.join(self.command)}; log:\n{self.log()[-3000:]}"
                )
            return text in self.log()

        wait_until(ready, timeout, f"{self.label} to log {text!r}", interval=0.05)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the session, then SIGKILL whatever is left after ``grace`` seconds."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Children (Celery's pool) may outlive their parent; the session id is the leader's pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        self._log.close()


# -- systems and measurements ------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    """What every system gets: where Redis is, which database, how many worker slots."""

    redis_address: str  # host:port
    db: int
    slots: int
    run: str  # run id: prefixes every queue, key and namespace this run creates
    log_dir: Path
    worker_log_level: str | None = None  # workerflow worker's --log-level; None: its default

    @property
    def broker_url(self) -> str:
        return f"redis://{self.redis_address}/{self.db}"


class System(Protocol):
    """One system under test, with its workers running between :meth:`start` and :meth:`close`."""

    name: str

    def start(self) -> None:
        """Start the workers and wait until they take tasks."""

    def pids(self) -> list[int]:
        """Root pids of the worker processes (their descendants are counted too)."""

    def run_batch(self, tasks: int, timeout: float) -> None:
        """Submit ``tasks`` no-op tasks at once and wait for every result."""

    def round_trips(self, tasks: int, timeout: float) -> list[float]:
        """Run ``tasks`` no-op tasks one after another; seconds each took from submit to result."""

    def key_patterns(self) -> list[str]:
        """Patterns of every Redis key this system may have created (all carry the run id)."""

    def close(self) -> None:
        """Stop the workers and release client resources; idempotent."""


@dataclass
class Measurement:
    """One measured window of one system."""

    system: str
    tasks: int
    seconds: float
    commands: Counter[str]
    cpu_by_process: dict[str, float]  # "client", "workers", "redis" -> CPU seconds
    round_trips: list[float] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu_by_process.values())

    def cpu_split(self) -> str:
        """CPU ms per task by process group, e.g. ``client 0.6 + workers 0.5 + redis 0.1``."""
        return " + ".join(
            f"{group} {1000 * seconds / self.tasks:.2f}"
            for group, seconds in self.cpu_by_process.items()
        )

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds

    @property
    def commands_per_task(self) -> float:
        return sum(self.commands.values()) / self.tasks

    @property
    def cpu_ms_per_task(self) -> float:
        return 1000 * self.cpu_seconds / self.tasks

    @property
    def p50_ms(self) -> float:
        return 1000 * percentile(self.round_trips, 0.50)

    @property
    def p99_ms(self) -> float:
        return 1000 * percentile(self.round_trips, 0.99)

    def top_commands(self, count: int = 6) -> str:
        return " ".join(
            f"{name}={calls / self.tasks:.2g}" for name, calls in self.commands.most_common(count)
        )


class Meter:
    """Measures windows: wall time, Redis command diff, CPU of client + workers + redis-server."""

    def __init__(self, probe: RedisProbe) -> None:
        self.probe = probe
        self.redis_pid = probe.server_pid()

    def measure(
        self, system: System, tasks: int, work: Callable[[], list[float] | None]
    ) -> Measurement:
        """Run ``work`` (which returns round trips, or None) as one window of ``tasks`` tasks."""
        worker_roots = system.pids()
        redis_pids = [] if self.redis_pid is None else [self.redis_pid]
        clock = CpuClock(
            {
                "client": lambda: [os.getpid()],
                "workers": lambda: process_tree(worker_roots),
                "redis": lambda: redis_pids,
            }
        )
        commands_before = self.probe.commands()
        cpu_before = clock.read()
        started = time.perf_counter()
        round_trips = work()
        seconds = time.perf_counter() - started
        if round_trips is not None and len(round_trips) != tasks:
            raise RuntimeError(f"{system.name}: {len(round_trips)} round trips timed of {tasks}")
        cpu_after = clock.read()
        commands = self.probe.commands()
        commands.subtract(commands_before)
        commands = Counter({name: calls for name, calls in commands.items() if calls > 0})
        return Measurement(
            system=system.name,
            tasks=tasks,
            seconds=seconds,
            commands=commands,
            cpu_by_process=CpuClock.since(cpu_before, cpu_after),
            round_trips=round_trips or [],
        )


# -- command line and output -------------------------------------------------------------------


def parser(description: str, systems: Sequence[str], tasks: int) -> argparse.ArgumentParser:
    """The flags both scripts share."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--tasks", type=int, default=tasks, help="no-op tasks per measured window")
    p.add_argument("--slots", type=int, default=2, help="worker slots for every system")
    p.add_argument("--systems", default=",".join(systems), help=f"comma-separated, of {systems}")
    p.add_argument("--redis", default="127.0.0.1:6379", help="host:port of the Redis to use")
    p.add_argument("--broker-db", type=int, default=12, help="Redis database for all traffic")
    p.add_argument(
        "--private-redis",
        action="store_true",
        help="start a throw-away redis-server on a free port instead of using --redis",
    )
    p.add_argument("--repeat", type=int, default=3, help="measured windows per system (median)")
    p.add_argument(
        "--slow-tasks",
        type=int,
        default=1000,
        help="cap on --tasks for the slow peer (taskflow), so a run stays in minutes",
    )
    p.add_argument(
        "--worker-log-level",
        default=None,
        help="--log-level for the workerflow worker; None leaves the worker's own default",
    )
    p.add_argument("--verbose", action="store_true", help="print every window, not only medians")
    return p


def selected(option: str, known: Sequence[str]) -> list[str]:
    names = [name.strip() for name in option.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"unknown system(s) {unknown}; choose from {list(known)}")
    return names


def median_of(windows: Sequence[Measurement], value: Callable[[Measurement], float]) -> float:
    return statistics.median(value(w) for w in windows)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)) + " |")


def terminate_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so ``finally`` blocks clean up as on Ctrl-C."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def bench_session(args: argparse.Namespace) -> Iterator[tuple[BenchConfig, RedisProbe]]:
    """The Redis to use (shared or private), a probe on it, a log directory; all torn down after."""
    terminate_on_sigterm()
    with contextlib.ExitStack() as stack:
        address = args.redis
        if args.private_redis:
            server = PrivateRedis()
            stack.callback(server.close)
            address = server.address
        log_dir = Path(tempfile.mkdtemp(prefix="wf-bench-"))
        config = BenchConfig(
            address, args.broker_db, args.slots, run_id(), log_dir, args.worker_log_level
        )
        probe = RedisProbe(config.broker_url)
        stack.callback(probe.close)
        try:
            yield config, probe
        except Exception:
            print(f"worker logs kept in {log_dir}", file=sys.stderr)
            raise
        except BaseException:
            shutil.rmtree(log_dir, ignore_errors=True)
            raise
        shutil.rmtree(log_dir, ignore_errors=True)


def machine_note() -> str:
    load1, _, _ = os.getloadavg()
    python = sys.version.split()[0]
    return f"{os.cpu_count()} cores, load average {load1:.2f} at start, python {python}"


def print_header(title: str, args: argparse.Namespace, config: BenchConfig) -> None:
    redis_kind = "private redis-server" if args.private_redis else "shared Redis"
    print(f"# {title}")
    print(
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {machine_note()}; {redis_kind} "
        f"{config.redis_address} db {config.db}; {config.slots} worker slots per system; "
        f"median of {args.repeat} windows; run id {config.run}",
        flush=True,
    )


def print_foreign(results: dict[str, list[Measurement]]) -> None:
    """Say once which other Redis clients were active during the windows (their commands count)."""
    clients = sorted({client for ws in results.values() for w in ws for client in w.foreign})
    if clients:
        shown = "; ".join(clients[:4]) + ("; ..." if len(clients) > 4 else "")
        print(
            f"note: {len(clients)} other Redis client(s) were active during the windows and their "
            f"commands are counted too ({shown}); --private-redis excludes them"
        )
