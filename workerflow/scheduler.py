"""Scheduler: the per-run bookkeeping of an engine's atoms.

For every atom it keeps the state and a count of predecessors that have not succeeded; an atom whose
count reaches zero is ready. It starts actions on the executor and receives their completions on a
queue fed by the futures' done-callbacks (which may run on any thread), so each completion costs
O(its successors) and a run is linear in the size of the flow. Tasks waiting out a retry policy's
delay sit in a timer heap, not in a sleep. Reverts are ordered the same way in reverse: an atom is
reverted once every successor that ran has been.

The :class:`~workerflow.engine.Engine` decides what to do (run forward, retry a scope, revert,
suspend); the scheduler does it and records everything in storage and on the atom notifier.
"""

from __future__ import annotations

import functools
import heapq
import logging
import queue
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any, Literal

from workerflow.compiler import STORE, CompiledFlow, Node, Scope
from workerflow.executors.base import Executor
from workerflow.failure import Failure
from workerflow.notifier import PROGRESS, Notifier
from workerflow.retry import Attempt, History, Retry, RetryState
from workerflow.states import TaskState, check_task_transition
from workerflow.storage import Storage
from workerflow.task import Task

__all__ = ["Scheduler"]

logger = logging.getLogger(__name__)

_EXECUTE: Literal["execute"] = "execute"
_REVERT: Literal["revert"] = "revert"
#: States of an atom that ran and so must be reverted when its flow is.
_RAN = frozenset({TaskState.SUCCESS, TaskState.FAILURE, TaskState.RETRYING})
_HISTORY = "retry.history:"


class Scheduler:
    """States, readiness counters, in-flight actions and retry timers of one engine's atoms."""

    def __init__(
        self,
        compiled: CompiledFlow,
        *,
        storage: Storage,
        executor: Executor,
        atom_notifier: Notifier,
        events: queue.SimpleQueue[Future[Any] | None],
    ) -> None:
        self.nodes = compiled.nodes
        self.storage = storage
        self.executor = executor
        self.atom_notifier = atom_notifier
        self.events = events
        self.states: list[TaskState] = []
        self.remaining: list[int] = []
        self.ready: deque[int] = deque()
        self.inflight: dict[Future[Any], tuple[int, str]] = {}
        self.timers: list[tuple[float, int]] = []  # (due, node): tasks RETRYING under a policy
        self.due: dict[int, float] = {}  # the live timer of each node; older heap entries are stale
        self.retry_states: dict[int, RetryState] = {}
        #: Execute failures not yet dealt with (by a retry scope or by reverting the flow).
        self.failures: dict[int, Failure] = {}
        self.revert_failures: dict[int, Failure] = {}
        self.revert_waiting: dict[int, int] = {}  # node -> successors still to revert
        self.revert_ready: list[int] = []
        self.store: dict[str, Any] = {}

    @property
    def capacity(self) -> int:
        """How many actions may be in flight on the executor."""
        return max(1, int(self.executor.capacity))

    def load(self) -> None:
        """Rebuild every counter from storage (a first run and a resume alike)."""
        nodes = self.nodes
        get_state = self.storage.get_state
        self.store = self.storage.get_store()
        states = self.states = [get_state(n.name) for n in nodes]
        done = TaskState.SUCCESS
        self.remaining = [
            sum(1 for p in n.predecessors if states[p] != done) if n.predecessors else 0
            for n in nodes
        ]
        self.ready = deque(
            i
            for i, s in enumerate(states)
            if (s == TaskState.PENDING and not self.remaining[i])
            or (s == TaskState.RETRYING and nodes[i].controls is not None)
        )
        now = time.monotonic()
        self.timers = []
        for i, s in enumerate(states):
            if s == TaskState.RETRYING and nodes[i].controls is None:
                self.timers.append((self.due.setdefault(i, now), i))
        heapq.heapify(self.timers)

    def failures_by_name(self, failures: dict[int, Failure]) -> dict[str, Failure]:
        """``failures`` keyed by atom name."""
        return {self.nodes[i].name: f for i, f in failures.items()}

    # -- running forward -----------------------------------------------------------------------

    def next_timer(self) -> float | None:
        """Seconds until the next retry is due (0 when overdue), or None without retries."""
        return max(0.0, self.timers[0][0] - time.monotonic()) if self.timers else None

    def fire_timers(self) -> None:
        """Make tasks whose retry delay has passed ready, ahead of the others."""
        timers = self.timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            due, i = heapq.heappop(timers)
            if self.states[i] == TaskState.RETRYING and self.due.get(i) == due:
                del self.due[i]
                self.ready.appendleft(i)

    def start(self, i: int) -> None:
        """Start atom ``i``: a task on the executor, a retry controller inline."""
        node = self.nodes[i]
        atom = node.atom
        if isinstance(atom, Retry):
            self._run_controller(node, atom)
            return
        assert isinstance(atom, Task)
        try:
            arguments = self.arguments(node)
        except Exception:
            self.set_state(node, TaskState.RUNNING, attempt=1)
            self.on_failure(node, Failure.current())
            return
        if self.states[i] == TaskState.PENDING and atom.retry_policy is not None:
            self.retry_states[i] = atom.retry_policy.start()
        retry_state = self.retry_states.get(i)
        attempt = retry_state.attempt if retry_state is not None else 1
        self.set_state(node, TaskState.RUNNING, attempt=attempt)
        try:
            future = self.executor.execute(
                atom,
                arguments,
                attempt=attempt,
                progress=functools.partial(self.on_progress, node.name),
            )
        except Exception:
            logger.exception("the executor refused task %r", node.name)
            self.on_failure(node, Failure.current())
            return
        self.inflight[future] = (i, _EXECUTE)
        future.add_done_callback(self.events.put)

    def _run_controller(self, node: Node, controller: Retry) -> None:
        # Retry controllers are cheap decisions: they run inline, on the engine's thread.
        try:
            arguments = self.arguments(node)
            self.set_state(node, TaskState.RUNNING)
            value = controller.execute(self.history(node), **arguments)
        except Exception:
            if self.states[node.index] != TaskState.RUNNING:
                self.set_state(node, TaskState.RUNNING)
            self.on_failure(node, Failure.current())
            return
        self.on_success(node, value)

    def arguments(self, node: Node) -> dict[str, Any]:
        """The keyword arguments of ``node``: rebinding applied, injected values merged."""
        arguments: dict[str, Any] = {}
        get_result = self.storage.get_result
        nodes = self.nodes
        for binding in node.bindings:
            if binding.source == STORE:
                if binding.name in self.store:
                    arguments[binding.param] = self.store[binding.name]
                elif not binding.optional:
                    arguments[binding.param] = self.storage.fetch(binding.name)
                continue
            value = get_result(nodes[binding.source].name)
            arguments[binding.param] = value if binding.position < 0 else value[binding.position]
        if node.inject:
            arguments.update(node.inject)
        return arguments

    def wait(self, timeout: float | None) -> None:
        """Wait for a completion (or a wake-up, or the timeout); handle every one that arrived."""
        try:
            item = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            if item is not None:
                self._complete(item)
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return

    def _complete(self, future: Future[Any]) -> None:
        entry = self.inflight.pop(future, None)
        if entry is None:
            logger.warning("ignoring a completion the engine is not waiting for: %r", future)
            return
        i, action = entry
        try:
            outcome = future.result()
        except BaseException as exc:  # the contract says never; do not let it kill the engine
            outcome = Failure.from_exception(exc)
        node = self.nodes[i]
        if action == _REVERT:
            self._on_reverted(node, outcome)
        elif isinstance(outcome, Failure):
            self.on_failure(node, outcome)
        else:
            self.on_success(node, outcome)

    def on_success(self, node: Node, result: Any) -> None:
        """Store the result and make successors whose inputs are now all there ready."""
        try:
            provided = _provided(node, result)
        except Exception:
            self.on_failure(node, Failure.current())
            return
        self.storage.save_result(node.name, result, provided)
        self.retry_states.pop(node.index, None)
        self.set_state(node, TaskState.SUCCESS, result=result)
        remaining = self.remaining
        states = self.states
        for j in node.successors:
            remaining[j] -= 1
            if not remaining[j] and states[j] == TaskState.PENDING:
                self.ready.append(j)

    def on_failure(self, node: Node, failure: Failure) -> None:
        """Record the failure; schedule the next attempt if the task's retry policy allows."""
        i = node.index
        self.storage.save_failure(node.name, failure)
        self.set_state(node, TaskState.FAILURE, failure=failure)
        retry_state = self.retry_states.get(i)
        delay = retry_state.next_delay(failure) if retry_state is not None else None
        if delay is None:
            logger.info("task %r failed: %s", node.name, failure)
            self.failures[i] = failure
            return
        assert retry_state is not None
        logger.info(
            "task %r failed (%s); attempt %d in %.3f s",
            node.name,
            failure,
            retry_state.attempt,
            delay,
        )
        self.set_state(node, TaskState.RETRYING, attempt=retry_state.attempt, delay=delay)
        due = time.monotonic() + delay
        self.due[i] = due
        heapq.heappush(self.timers, (due, i))

    def on_progress(self, task: str, fraction: float, details: dict[str, Any]) -> None:
        """Progress from any thread: stored, then sent to the atom notifier."""
        try:
            self.storage.save_progress(task, fraction, details)
            if len(self.atom_notifier):
                self.atom_notifier.notify(PROGRESS, {**details, "task": task, "progress": fraction})
        except Exception:
            logger.exception("dropping progress of task %r", task)

    def set_state(self, node: Node, target: TaskState, **details: Any) -> None:
        """Check and record a state change; tell the atom notifier."""
        current = self.states[node.index]
        check_task_transition(f"task {node.name!r}", current, target)
        self.states[node.index] = target
        self.storage.set_state(node.name, target)
        if len(self.atom_notifier):
            self.atom_notifier.notify(target, {"task": node.name, "old_state": current, **details})

    # -- retry controllers ---------------------------------------------------------------------

    def history(self, node: Node) -> History:
        """The failed attempts of the flow controlled by ``node`` so far."""
        saved = self.storage.get_meta(_HISTORY + node.name, [])
        return History(tuple(Attempt.from_dict(a) for a in saved))

    def record_attempt(self, node: Node, attempt: Attempt) -> None:
        """Add a failed attempt to the controller's history (kept in storage)."""
        key = _HISTORY + node.name
        self.storage.set_meta(key, [*self.storage.get_meta(key, []), attempt.to_dict()])

    def restart_scope(self, scope: Scope) -> None:
        """Make a reverted retry scope runnable again, starting with its controller."""
        nodes = self.nodes
        states = self.states
        members = scope.members
        for m in members:
            self.failures.pop(m, None)
            self.retry_states.pop(m, None)
            self.due.pop(m, None)
            if states[m] == TaskState.REVERTED:
                self.set_state(nodes[m], TaskState.PENDING)
            self.storage.reset(nodes[m].name)
        assert scope.controller is not None
        controller = nodes[scope.controller]
        self.set_state(controller, TaskState.RETRYING)
        # Recount the members and the atoms just outside that wait on them: those counted the
        # members' first successes, which the revert has undone.
        in_scope = set(members)
        affected = in_scope | {s for m in members for s in nodes[m].successors}
        for j in affected:
            self.remaining[j] = sum(
                1 for p in nodes[j].predecessors if states[p] != TaskState.SUCCESS
            )
        # Members that were ready when the failure halted the run wait for the controller again.
        kept = [i for i in self.ready if i not in in_scope]
        self.ready.clear()
        self.ready.extend(kept)
        self.ready.append(controller.index)

    # -- reverting -----------------------------------------------------------------------------

    def plan_revert(self, scopes: Iterable[Scope]) -> None:
        """Select every atom of ``scopes`` that ran, ready to revert successors first."""
        states = self.states
        nodes = self.nodes
        selected = {m for scope in scopes for m in scope.members if states[m] in _RAN}
        waiting = self.revert_waiting = {
            i: sum(1 for s in nodes[i].successors if s in selected) for i in selected
        }
        # Popped from the end: among independent atoms the newest is reverted first.
        self.revert_ready = sorted(i for i, n in waiting.items() if not n)

    def revert_done(self) -> bool:
        """Whether every selected atom has been reverted."""
        return not self.revert_ready and not any(self.revert_waiting.values())

    def start_revert(self, i: int) -> None:
        """Revert atom ``i``: on the executor, or at once when its revert does nothing."""
        node = self.nodes[i]
        atom = node.atom
        state = self.states[i]
        self.set_state(node, TaskState.REVERTING)
        if isinstance(atom, Retry) or not node.has_revert:
            if isinstance(atom, Retry):
                self.storage.delete_meta(_HISTORY + node.name)
            self._on_reverted(node, None)
            return
        assert isinstance(atom, Task)
        try:
            result: Any
            if state == TaskState.SUCCESS:
                result = self.storage.get_result(node.name)
            else:
                result = self.storage.get_failure(node.name)
            arguments = self.arguments(node)
            future = self.executor.revert(
                atom,
                arguments,
                result=result,
                flow_failures=self.failures_by_name(self.failures),
                progress=functools.partial(self.on_progress, node.name),
            )
        except Exception:
            self._on_reverted(node, Failure.current())
            return
        self.inflight[future] = (i, _REVERT)
        future.add_done_callback(self.events.put)

    def _on_reverted(self, node: Node, outcome: Any) -> None:
        if isinstance(outcome, Failure):
            logger.error("reverting task %r failed: %s", node.name, outcome)
            self.storage.save_failure(node.name, outcome, revert=True)
            self.revert_failures[node.index] = outcome
            self.set_state(node, TaskState.REVERT_FAILURE, failure=outcome)
            return
        self.set_state(node, TaskState.REVERTED)
        waiting = self.revert_waiting
        for p in node.predecessors:
            if p in waiting:
                waiting[p] -= 1
                if not waiting[p]:
                    self.revert_ready.append(p)

    def drain(self) -> None:
        """Wait for every in-flight action to finish (used when a run is abandoned)."""
        while self.inflight:
            try:
                self.wait(None)
            except Exception:
                logger.exception("error while draining in-flight actions; dropping them")
                self.inflight.clear()


def _provided(node: Node, result: Any) -> dict[str, Any]:
    """The values ``result`` provides, by name (a tuple of names unpacks a sequence)."""
    names = node.provides
    if not names:
        return {}
    if len(names) == 1:
        return {names[0]: result}
    try:
        values = list(result)
    except TypeError:
        raise TypeError(
            f"task {node.name!r} provides {names} but returned {type(result).__name__}, "
            "which is not a sequence"
        ) from None
    if len(values) != len(names):
        raise ValueError(
            f"task {node.name!r} provides {len(names)} names but returned {len(values)} values"
        )
    return dict(zip(names, values, strict=True))
