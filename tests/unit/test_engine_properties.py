"""Invariants over many random nested flows with random failures, retries and suspensions.

For every run: an atom starts only once all its predecessors have succeeded; an atom is reverted
only after every successor that ran has been; a REVERTED flow has undone everything that ran; a
SUCCESS flow ran everything; a FAILURE flow has a REVERT_FAILURE. Seeds are fixed: reproducible.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest
import tenacity

from workerflow import Engine, Flow, GraphFlow, LinearFlow, Task, UnorderedFlow
from workerflow.errors import WrappedFailure
from workerflow.executors import ThreadExecutor
from workerflow.retry import ForEach, RetryPolicy, Times


class Boom(Exception):
    pass


class Random(Task):
    """Fails with probability ``fail_p`` (drawn from the shared seeded rng); records everything."""

    def __init__(self, fail_p: float, revert_fails: bool, **options: Any) -> None:
        super().__init__(**options)
        self.fail_p = fail_p
        self.revert_fails = revert_fails

    def execute(self, journal: list[tuple[str, str]], rng: Any, lock: Any, **_: Any) -> str:
        with lock:
            journal.append(("execute", self.name))
            fail = rng.random() < self.fail_p
        if fail:
            raise Boom(self.name)
        return self.name

    def revert(self, journal: list[tuple[str, str]], lock: Any, **_: Any) -> None:
        with lock:
            journal.append(("revert", self.name))
        if self.revert_fails:
            raise OSError(f"cannot revert {self.name}")


def random_flow(rng: random.Random, depth: int, counter: list[int], provided: list[str]) -> Flow:
    kind = rng.choice([LinearFlow, UnorderedFlow, GraphFlow])
    retry = None
    if rng.random() < 0.3:
        retry = rng.choice([Times(rng.randint(1, 3)), ForEach([1, 2])])
    counter[0] += 1
    flow = kind(f"f{counter[0]}", retry=retry)
    for _ in range(rng.randint(0, 4)):
        if depth < 3 and rng.random() < 0.3:
            flow.add(random_flow(rng, depth + 1, counter, provided))
            continue
        counter[0] += 1
        name = f"t{counter[0]}"
        requires = (
            (rng.choice(provided),) if kind is GraphFlow and provided and rng.random() < 0.4 else ()
        )
        policy = RetryPolicy(stop=tenacity.stop_after_attempt(2)) if rng.random() < 0.2 else None
        flow.add(
            Random(
                rng.choice([0, 0, 0.1, 0.3]),
                rng.random() < 0.05,
                name=name,
                provides=f"{name}_out",
                requires=requires,
                retry_policy=policy,
            )
        )
        if kind is GraphFlow:
            provided.append(f"{name}_out")
    return flow


@pytest.mark.parametrize("threads", [False, True], ids=["serial", "threads"])
@pytest.mark.parametrize("seed", range(250))
def test_random_flows_keep_the_invariants(seed: int, threads: bool) -> None:
    rng = random.Random(seed)
    flow = random_flow(rng, 0, [0], [])
    journal: list[tuple[str, str]] = []
    store = {"journal": journal, "rng": random.Random(seed), "lock": threading.Lock()}
    executor = ThreadExecutor(3) if threads else None
    engine = Engine(flow, store=store, executor=executor)
    try:
        compiled = engine.compile()
    except Exception:  # some random graphs are ambiguous or cyclic; that is compile's job
        return
    nodes = compiled.nodes
    predecessors = {n.name: [nodes[p].name for p in n.predecessors] for n in nodes}
    successors = {n.name: [nodes[s].name for s in n.successors] for n in nodes}
    latest: dict[str, str] = {}
    violations: list[str] = []
    suspender = random.Random(seed * 7)

    def watch(event: str, details: dict[str, Any]) -> None:
        task = details["task"]
        if event == "RUNNING":
            violations.extend(
                f"{task} started before {p} succeeded"
                for p in predecessors[task]
                if latest.get(p) != "SUCCESS"
            )
        latest[task] = event
        if event == "SUCCESS" and suspender.random() < 0.1:
            engine.suspend()

    engine.atom_notifier.register(watch)
    if executor is not None:
        executor.start()
    try:
        while True:
            engine.run()
            if engine.state != "SUSPENDED":
                break
    except (Boom, WrappedFailure, OSError):
        pass
    finally:
        if executor is not None:
            executor.stop()

    assert not violations
    states = {n.name: engine.storage.get_state(n.name) for n in nodes}
    if engine.state == "SUCCESS":
        assert set(states.values()) <= {"SUCCESS"}
    elif engine.state == "REVERTED":
        assert set(states.values()) <= {"REVERTED", "PENDING"}
    else:
        assert engine.state == "FAILURE"
        assert "REVERT_FAILURE" in states.values()
    executed: set[str] = set()
    for action, task in journal:
        if action == "execute":
            executed.add(task)
            continue
        assert not executed & set(successors[task]), f"{task} reverted before its successors"
        executed.discard(task)
    if engine.state == "REVERTED":
        assert not executed, f"ran but not reverted: {executed}"
