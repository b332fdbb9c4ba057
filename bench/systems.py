"""The systems the benchmarks can run, by name, and the loop that measures one of them.

Every system is started with the same worker slots, warmed up, measured ``--repeat`` times, then
stopped, and the Redis keys it created (all carry the run id) are deleted, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

from bench.common import BenchConfig, Measurement, Meter, RedisProbe, System

#: name -> "module:class"; a module is imported only when its system is asked for.
_CLASSES = {
    "workerflow": "bench.workerflow_system:WorkerflowExecutorSystem",
    "workerflow-engine": "bench.workerflow_system:WorkerflowEngineSystem",
    "celery": "bench.peers.celery_peer:CelerySystem",
    "dramatiq": "bench.peers.dramatiq_peer:DramatiqSystem",
    "taskflow": "bench.peers.taskflow_peer:TaskflowSystem",
    "bare": "bench.bare_loop:BareSystem",
}
SYSTEMS = tuple(_CLASSES)
SLOW_SYSTEMS = frozenset({"taskflow"})


def make_system(name: str, config: BenchConfig) -> System:
    """Build (not start) the system called ``name``; peers are imported only when asked for."""
    if name not in _CLASSES:
        raise ValueError(f"unknown system {name!r}")
    module, cls = _CLASSES[name].split(":")
    system: System = getattr(importlib.import_module(module), cls)(config)
    return system


def tasks_for(name: str, args: argparse.Namespace) -> int:
    return min(args.tasks, args.slow_tasks) if name in SLOW_SYSTEMS else args.tasks


def wait_bound(tasks: int) -> float:
    """How long one window may take before it is called hung: 60 s plus 50 ms per task."""
    return 60.0 + 0.05 * tasks


def measure_system(
    name: str,
    config: BenchConfig,
    probe: RedisProbe,
    args: argparse.Namespace,
    work: Callable[[System, int, float], list[float] | None],
    warmup: int,
) -> list[Measurement]:
    """Start ``name``, warm up with ``warmup`` tasks, measure ``args.repeat`` windows, stop it."""
    tasks = tasks_for(name, args)
    system = make_system(name, config)
    meter = Meter(probe)
    windows = []
    try:
        system.start()
        work(system, min(warmup, tasks), wait_bound(warmup))
        for _ in range(args.repeat):
            window = meter.measure(system, tasks, lambda: work(system, tasks, wait_bound(tasks)))
            window.foreign = probe.foreign_clients(
                lambda client: int(client["db"]) == config.db, window.seconds
            )
            windows.append(window)
            if args.verbose:
                latency = f"p50 {window.p50_ms:.2f} ms, " if window.round_trips else ""
                print(
                    f"  {name}: {window.rate:,.0f} tasks/s, {latency}"
                    f"{window.commands_per_task:.1f} cmds/task ({window.top_commands(20)}), "
                    f"{window.cpu_ms_per_task:.2f} CPU ms/task ({window.cpu_split()})",
                    flush=True,
                )
    finally:
        system.close()
        for pattern in system.key_patterns():
            probe.delete_matching(pattern)
    return windows
