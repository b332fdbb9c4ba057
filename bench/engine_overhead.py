"""Engine overhead: compile and run 1,000- and 10,000-task flows of no-op tasks, serially.

Prints the per-task overhead for linear and unordered flows and the 10k/1k time ratio (the target
is at most 12, i.e. roughly linear). Run: ``.venv/bin/python bench/engine_overhead.py``;
``--profile`` prints a cProfile of a 10k linear run; ``--no-gc`` measures with CPython's cyclic
garbage collector off, which shows what part of the ratio is the collector's (a full collection
falls inside a 10k-task compile but not inside a 1k one), not the engine's.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import time
from collections.abc import Callable

from workerflow import Engine, Flow, LinearFlow, Task, UnorderedFlow


class Noop(Task):
    def execute(self) -> None:
        return None


def build(kind: type[Flow], size: int) -> Flow:
    return kind(f"{kind.__name__}-{size}").add(*[Noop(name=f"t{i}") for i in range(size)])


def measure(kind: type[Flow], size: int, repeat: int) -> tuple[float, float]:
    """Best (compile seconds, compile+run seconds) over ``repeat`` runs."""
    best_compile = best_total = float("inf")
    for _ in range(repeat):
        flow = build(kind, size)
        gc.collect()
        start = time.perf_counter()
        engine = Engine(flow)
        engine.compile()
        compiled = time.perf_counter()
        engine.run()
        done = time.perf_counter()
        best_compile = min(best_compile, compiled - start)
        best_total = min(best_total, done - start)
    return best_compile, best_total


def profile(run: Callable[[], None]) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile a 10k linear run")
    parser.add_argument("--no-gc", action="store_true", help="disable the cyclic GC")
    args = parser.parse_args()
    if args.no_gc:
        gc.disable()
    if args.profile:
        profile(lambda: Engine(build(LinearFlow, 10_000)).run())
        return
    print(f"{'flow':<10} {'tasks':>6} {'compile s':>10} {'total s':>9} {'µs/task':>8}")
    for kind in (LinearFlow, UnorderedFlow):
        totals: dict[int, float] = {}
        for size in (1_000, 10_000):
            compile_s, total_s = measure(kind, size, args.repeat)
            totals[size] = total_s
            print(
                f"{kind.__name__:<10} {size:>6} {compile_s:>10.4f} {total_s:>9.4f} "
                f"{total_s / size * 1e6:>8.1f}"
            )
        print(f"{kind.__name__:<10} 10k/1k time ratio: {totals[10_000] / totals[1_000]:.2f}")


if __name__ == "__main__":
    main()
