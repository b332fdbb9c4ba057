"""A TaskFlow worker-based-engine worker serving bench.peers.taskflow_peer.NoOp, for the benchmarks.

    python -m bench.peers.taskflow_worker --broker redis://127.0.0.1:6379/12 \\
        --exchange X --topic T --prefix P --threads 2

Logs ``worker ready`` once its server runs; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import Any

from taskflow.engines.worker_based.worker import Worker

from bench.peers.taskflow_peer import NoOp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", required=True)
    parser.add_argument("--exchange", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--prefix", required=True, help="global key prefix of every Redis key")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    worker = Worker(
        exchange=args.exchange,
        topic=args.topic,
        tasks=[NoOp],
        threads_count=args.threads,
        url=args.broker,
        transport_options={"global_keyprefix": f"{args.prefix}:"},
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    runner = threading.Thread(target=worker.run, kwargs={"display_banner": False}, daemon=True)
    runner.start()
    worker.wait()
    print("worker ready", flush=True)
    while not stop.wait(0.5):
        if not runner.is_alive():
            raise SystemExit("the TaskFlow worker's server thread died")
    worker.stop()


if __name__ == "__main__":
    main()
