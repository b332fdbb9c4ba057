"""Notifications from the engine: task states, progress, flow states; the shipped listeners."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from workerflow import Engine, LinearFlow, Task, task
from workerflow.executors import ThreadExecutor
from workerflow.listeners import LoggingListener, TimingListener


class Progressing(Task):
    provides = "out"

    def execute(self, steps: int) -> int:
        for i in range(steps):
            self.update_progress((i + 1) / steps, step=i + 1)
        return steps

    def revert(self, result: Any) -> None:
        self.update_progress(1.0, undoing=True)


@pytest.mark.parametrize("threads", [False, True])
def test_progress_reaches_atom_notifier_and_storage(threads: bool) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    executor = ThreadExecutor(2) if threads else None
    engine = Engine(
        LinearFlow("f").add(Progressing(name="p")), store={"steps": 4}, executor=executor
    )
    engine.atom_notifier.register(lambda event, details: events.append((event, details)))
    engine.run()
    progress = [d for e, d in events if e == "PROGRESS"]
    assert [d["progress"] for d in progress] == [0.25, 0.5, 0.75, 1.0]
    assert progress[0] == {"task": "p", "progress": 0.25, "step": 1}
    assert engine.storage.get_progress("p") == (1.0, {"step": 4})
    assert [e for e, _ in events if e != "PROGRESS"] == ["RUNNING", "SUCCESS"]
    success = next(d for e, d in events if e == "SUCCESS")
    assert success["task"] == "p" and success["result"] == 4 and success["old_state"] == "RUNNING"


def test_progress_during_revert_and_failure_details() -> None:
    events: list[tuple[str, dict[str, Any]]] = []

    @task
    def fail() -> None:
        raise ValueError("no")

    engine = Engine(LinearFlow("f").add(Progressing(name="p"), fail), store={"steps": 1})
    engine.atom_notifier.register(lambda event, details: events.append((event, details)))
    with pytest.raises(ValueError):
        engine.run()
    failure = next(d for e, d in events if e == "FAILURE")
    assert str(failure["failure"]) == "ValueError: no"
    assert ("PROGRESS", {"undoing": True, "task": "p", "progress": 1.0}) in events
    assert [e for e, d in events if d["task"] == "p" and e != "PROGRESS"] == [
        "RUNNING",
        "SUCCESS",
        "REVERTING",
        "REVERTED",
    ]


def test_flow_notifier_details_and_event_filter() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    engine = Engine(LinearFlow("flowname").add(task(name="t")(lambda: None)))
    engine.notifier.register(lambda s, d: seen.append((s, d)), events=["SUCCESS"])
    engine.run()
    assert seen == [("SUCCESS", {"flow": "flowname", "old_state": "RUNNING"})]


def test_logging_listener_logs_flow_and_task_states(caplog: pytest.LogCaptureFixture) -> None:
    engine = Engine(LinearFlow("f").add(Progressing(name="p")), store={"steps": 1})
    caplog.set_level(logging.DEBUG, logger="workerflow.listeners")
    with LoggingListener(engine):
        engine.run()
    text = caplog.text
    assert "flow 'f' is RUNNING" in text
    assert "task 'p' is SUCCESS" in text
    assert "task 'p' progress 100%" in text
    assert len(engine.notifier) == 0 and len(engine.atom_notifier) == 0


def test_timing_listener_measures_each_task() -> None:
    engine = Engine(
        LinearFlow("f").add(Progressing(name="a"), Progressing(name="b", provides="o2")),
        store={"steps": 1},
    )
    with TimingListener(engine) as timing:
        engine.run()
    assert set(timing.durations) == {"a", "b"}
    assert all(d >= 0 for d in timing.durations.values())


def test_listener_registration_is_all_or_nothing() -> None:
    engine = Engine(LinearFlow("f").add(Progressing(name="a")))
    listener = LoggingListener(engine)
    engine.atom_notifier.register(listener.on_task)  # makes the second half fail
    with pytest.raises(ValueError, match="already registered"):
        listener.register()
    assert not engine.notifier.is_registered(listener.on_flow)
