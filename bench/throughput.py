"""Throughput of no-op tasks end to end: submit N at once, wait for all N results.

Each system gets the same worker slots (``--slots``, default 2) on the same Redis in the same run:

- ``workerflow``: ``WorkerExecutor.execute()`` N times, then every future's result;
- ``workerflow-engine``: an ``Engine`` running an ``UnorderedFlow`` of N no-op tasks;
- ``celery``: N ``delay()`` calls, then ``ResultSet.get()`` (prefork, json, Redis broker and result
  backend);
- ``dramatiq``: N ``send()`` calls, then each message's result from the Redis results backend
  (one process x ``--slots`` threads, Redis broker);
- ``taskflow``: TaskFlow's worker-based engine running an unordered flow of N tasks (capped at
  ``--slow-tasks``, it does about 100 tasks/s);
- ``bare``: the redis-py + msgpack loop of bench/bare_loop.py, the floor.

Per system: start the workers, warm up with 100 tasks, measure ``--repeat`` windows and print the
medians of tasks/s, Redis commands per task (INFO commandstats diff) and CPU milliseconds per task
across the client, the worker processes and redis-server.

    .venv/bin/python bench/throughput.py --tasks 2000 --systems workerflow,celery,bare
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Measurement,
    System,
    bench_session,
    median_of,
    parser,
    print_foreign,
    print_header,
    print_table,
    selected,
)
from bench.systems import SYSTEMS, measure_system


def submit_all(system: System, tasks: int, timeout: float) -> None:
    system.run_batch(tasks, timeout)


def main() -> int:
    args = parser(__doc__.splitlines()[0], SYSTEMS, tasks=2000).parse_args()
    names = selected(args.systems, SYSTEMS)
    results: dict[str, list[Measurement]] = {}
    try:
        with bench_session(args) as (config, probe):
            print_header("throughput: no-op tasks end to end", args, config)
            for name in names:
                results[name] = measure_system(name, config, probe, args, submit_all, warmup=100)
    except KeyboardInterrupt:
        print("interrupted; workers stopped and keys deleted", file=sys.stderr)
        return 130
    celery_rate = median_of(results["celery"], lambda w: w.rate) if "celery" in results else None
    bare_rate = median_of(results["bare"], lambda w: w.rate) if "bare" in results else None
    rows = []
    for name, windows in results.items():
        rate = median_of(windows, lambda w: w.rate)
        rows.append([
            name,
            f"{windows[0].tasks}",
            f"{rate:,.0f}",
            f"{rate / celery_rate:.2f}x" if celery_rate else "-",
            f"{100 * rate / bare_rate:.0f}%" if bare_rate else "-",
            f"{median_of(windows, lambda w: w.commands_per_task):.1f}",
            f"{median_of(windows, lambda w: w.cpu_ms_per_task):.2f}",
            windows[len(windows) // 2].top_commands(),
        ])  # fmt: skip
    print_table(
        ["system", "tasks", "tasks/s", "vs celery", "of bare", "Redis cmds/task", "CPU ms/task",
         "commands per task (one window)"],
        rows,
    )  # fmt: skip
    print_foreign(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
