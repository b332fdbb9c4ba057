"""The floor: a request/response loop written straight on redis-py and msgpack, no framework.

Per task exactly four Redis commands: the client ``LPUSH``es ``msgpack([id, reply_key, args])``
onto the request list, a worker ``BLPOP``s it, runs nothing, ``LPUSH``es ``msgpack([id, None])``
onto the reply list named in the request, and the client ``BLPOP``s the reply. No retries, no
acknowledgement, no timeouts beyond the blocking pop's, no serialization checks: this is what
any per-task protocol over Redis costs at least on this machine, not a usable system.

Worker slots are worker processes here (one blocking loop each).

Worker: ``python -m bench.bare_loop --broker redis://127.0.0.1:6379/12 --queue KEY``; it prints
``worker ready`` once connected.
"""

from __future__ import annotations

import argparse
import sys
import time

import msgpack
import redis

from bench.common import BenchConfig, Daemon


def serve(broker_url: str, queue: str) -> None:
    """Answer requests on the list ``queue`` until killed."""
    client = redis.Redis.from_url(broker_url)
    client.ping()
    print("worker ready", flush=True)
    while True:
        popped = client.blpop([queue], timeout=1)
        if popped is None:
            continue
        request_id, reply_key, _arguments = msgpack.unpackb(popped[1])
        client.lpush(reply_key, msgpack.packb([request_id, None]))


class BareSystem:
    """``slots`` worker processes, one client connection."""

    name = "bare"

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self.prefix = f"bench-{config.run}-bare"
        self.queue = f"{self.prefix}:requests"
        self.replies = f"{self.prefix}:replies"
        self.client = redis.Redis.from_url(config.broker_url, socket_timeout=30)
        self.workers: list[Daemon] = []
        self.next_id = 0

    def start(self) -> None:
        for index in range(self.config.slots):
            self.workers.append(
                Daemon(
                    [sys.executable, "-m", "bench.bare_loop", "--broker", self.config.broker_url,
                     "--queue", self.queue],
                    self.config.log_dir, f"bare-worker-{index}",
                )
            )  # fmt: skip
        for worker in self.workers:
            worker.wait_ready("worker ready")

    def pids(self) -> list[int]:
        return [worker.pid for worker in self.workers]

    def _submit(self) -> int:
        self.next_id += 1
        self.client.lpush(self.queue, msgpack.packb([self.next_id, self.replies, {}]))
        return self.next_id

    def _receive(self, deadline: float) -> int:
        remaining = max(0.1, deadline - time.monotonic())
        popped = self.client.blpop([self.replies], timeout=remaining)
        if popped is None:
            raise TimeoutError("no reply from the bare workers")
        request_id, _result = msgpack.unpackb(popped[1])
        return int(request_id)

    def run_batch(self, tasks: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = {self._submit() for _ in range(tasks)}
        while pending:
            pending.discard(self._receive(deadline))

    def round_trips(self, tasks: int, timeout: float) -> list[float]:
        deadline = time.monotonic() + timeout
        durations = []
        for _ in range(tasks):
            started = time.perf_counter()
            sent = self._submit()
            if self._receive(deadline) != sent:
                raise RuntimeError("bare loop: reply to another request")
            durations.append(time.perf_counter() - started)
        return durations

    def key_patterns(self) -> list[str]:
        return [f"{self.prefix}:*"]

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers.clear()
        self.client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="A bare redis-py + msgpack worker loop.")
    parser.add_argument("--broker", required=True)
    parser.add_argument("--queue", required=True)
    args = parser.parse_args()
    try:
        serve(args.broker, args.queue)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
