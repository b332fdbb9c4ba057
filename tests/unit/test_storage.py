"""MemoryStorage: task states, results by task and by name, failures, progress, metadata."""

from __future__ import annotations

import threading

import pytest

from workerflow.errors import NotFound
from workerflow.failure import Failure
from workerflow.states import FlowState, TaskState
from workerflow.storage import MemoryStorage


def test_defaults() -> None:
    storage = MemoryStorage()
    assert storage.get_flow_state() == FlowState.PENDING
    assert storage.get_state("never") == TaskState.PENDING
    assert storage.get_failure("never") is None
    assert storage.get_progress("never") is None
    assert storage.get_meta("k", "default") == "default"
    assert storage.fetch_all() == {}


def test_results_by_task_and_by_name_with_store_fallback() -> None:
    storage = MemoryStorage()
    storage.update_store({"a": 1, "x": "from store"})
    storage.save_result("t1", (1, 2), {"left": 1, "right": 2})
    storage.save_result("t2", "new x", {"x": "new x"})
    assert storage.get_result("t1") == (1, 2)
    assert storage.fetch("left") == 1
    assert storage.fetch("x") == "new x"  # a task's value wins over the initial store
    assert storage.fetch("a") == 1
    assert storage.fetch_all() == {"a": 1, "x": "new x", "left": 1, "right": 2}
    with pytest.raises(NotFound, match="'missing'"):
        storage.fetch("missing")
    with pytest.raises(NotFound):
        storage.get_result("t3")


def test_reset_forgets_a_task_but_not_values_others_provided_since() -> None:
    storage = MemoryStorage()
    storage.update_store({"x": 0})
    storage.save_result("t1", 1, {"x": 1, "y": 1})
    storage.save_result("t2", 2, {"y": 2})
    storage.save_failure("t1", Failure(("builtins.ValueError",), "v"))
    storage.save_progress("t1", 0.5, {"step": 1})
    storage.reset("t1")
    assert storage.fetch("x") == 0  # back to the store's value
    assert storage.fetch("y") == 2
    assert storage.get_failure("t1") is None and storage.get_progress("t1") is None
    with pytest.raises(NotFound):
        storage.get_result("t1")


def test_failures_for_execute_and_revert_are_separate() -> None:
    storage = MemoryStorage()
    execute = Failure(("builtins.ValueError",), "execute")
    revert = Failure(("builtins.OSError",), "revert")
    storage.save_failure("t", execute)
    storage.save_failure("t", revert, revert=True)
    assert storage.get_failure("t") == execute
    assert storage.get_failure("t", revert=True) == revert


def test_states_meta_progress() -> None:
    storage = MemoryStorage()
    storage.set_flow_state(FlowState.RUNNING)
    storage.set_state("t", TaskState.RUNNING)
    storage.set_meta("k", [1, 2])
    storage.save_progress("t", 0.25, {"step": 1})
    assert storage.get_flow_state() == "RUNNING"
    assert storage.get_state("t") == "RUNNING"
    assert storage.get_meta("k") == [1, 2]
    assert storage.get_progress("t") == (0.25, {"step": 1})
    storage.delete_meta("k")
    storage.delete_meta("k")
    assert storage.get_meta("k") is None
    assert storage.get_store() == {}


def test_concurrent_progress_and_results() -> None:
    storage = MemoryStorage()

    def work(n: int) -> None:
        for i in range(300):
            storage.save_progress(f"t{n}", i / 300, {})
            storage.save_result(f"t{n}-{i}", i, {f"v{n}-{i}": i})

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(storage.fetch_all()) == 1200
