"""Round-trip latency of one no-op task, sequentially: submit, wait for the result, repeat.

Each system gets the same worker slots (``--slots``, default 2) on the same Redis in the same run:

- ``workerflow``: ``WorkerExecutor.execute(task, {}).result()`` in a loop;
- ``workerflow-engine``: an ``Engine`` running a ``LinearFlow`` of N no-op tasks; a round trip is
  the time from a task's RUNNING to its SUCCESS notification;
- ``celery``: ``noop.delay().get()`` in a loop (prefork, json, Redis broker and result backend);
- ``dramatiq``: ``send()`` then a blocking ``get_result()`` in a loop (one process x ``--slots``
  threads, Redis broker and results backend);
- ``taskflow``: TaskFlow's worker-based engine running a linear flow of N tasks (capped at
  ``--slow-tasks``), round trips from RUNNING to SUCCESS as for ``workerflow-engine``;
- ``bare``: the redis-py + msgpack loop of bench/bare_loop.py, the floor.

Per system: start the workers, warm up with 50 round trips, measure ``--repeat`` windows of N
round trips and print the medians of p50 and p99, of the wall time per task (window / N, which
for the engines includes scheduling between tasks), and of Redis commands and CPU milliseconds per
task (client + workers + redis-server).

    .venv/bin/python bench/latency.py --tasks 500 --systems workerflow,celery,bare
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


def one_at_a_time(system: System, tasks: int, timeout: float) -> list[float]:
    return system.round_trips(tasks, timeout)


def main() -> int:
    args = parser(__doc__.splitlines()[0], SYSTEMS, tasks=500).parse_args()
    names = selected(args.systems, SYSTEMS)
    results: dict[str, list[Measurement]] = {}
    try:
        with bench_session(args) as (config, probe):
            print_header("latency: sequential round trips of one no-op task", args, config)
            for name in names:
                results[name] = measure_system(name, config, probe, args, one_at_a_time, warmup=50)
    except KeyboardInterrupt:
        print("interrupted; workers stopped and keys deleted", file=sys.stderr)
        return 130
    celery_p50 = median_of(results["celery"], lambda w: w.p50_ms) if "celery" in results else None
    bare_p50 = median_of(results["bare"], lambda w: w.p50_ms) if "bare" in results else None
    rows = []
    for name, windows in results.items():
        p50 = median_of(windows, lambda w: w.p50_ms)
        rows.append([
            name,
            f"{windows[0].tasks}",
            f"{p50:.2f}",
            f"{p50 / celery_p50:.2f}x" if celery_p50 else "-",
            f"{p50 / bare_p50:.1f}x" if bare_p50 else "-",
            f"{median_of(windows, lambda w: w.p99_ms):.2f}",
            f"{median_of(windows, lambda w: 1000 / w.rate):.2f}",
            f"{median_of(windows, lambda w: w.commands_per_task):.1f}",
            f"{median_of(windows, lambda w: w.cpu_ms_per_task):.2f}",
        ])  # fmt: skip
    print_table(
        ["system", "round trips", "p50 ms", "p50 vs celery", "p50 vs bare", "p99 ms",
         "wall ms/task", "Redis cmds/task", "CPU ms/task"],
        rows,
    )  # fmt: skip
    print_foreign(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
