"""Engine: runs a compiled flow on an executor, stores results, and reverts on failure.

Runnable atoms are dispatched while the executor has capacity; the bookkeeping (states, readiness
counters, completions arriving from any thread, retry timers) is the :mod:`workerflow.scheduler`'s,
and costs time linear in the size of the flow. The engine decides what happens next.

On a failure the engine stops starting tasks and lets in-flight ones finish. Then each failure goes
to the innermost flow retry controller above it: a controller that wants to retry has its flow's
tasks reverted and run again; otherwise the failure moves outwards. A failure that reaches the top
reverts everything that ran, newest first (successors before predecessors, the failed task too, with
its Failure as ``result``), and the original exception is raised: the very exception object for one
failure, :class:`~workerflow.errors.WrappedFailure` holding every Failure for several.

A revert that fails leaves its task in REVERT_FAILURE and stops further reverts (what they would
undo may depend on the failed one); the flow ends in FAILURE and the raised exception carries one
``__notes__`` line per failed revert, naming the task and the revert's error. The revert Failure
itself is in ``engine.storage.get_failure(task, revert=True)`` and ``engine.revert_failures``.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Generator, Mapping
from concurrent.futures import Future
from typing import Any, Literal

from workerflow.compiler import CompiledFlow, Node, Scope, compile_flow
from workerflow.errors import WrappedFailure
from workerflow.executors.base import Executor
from workerflow.executors.local import SerialExecutor
from workerflow.failure import Failure
from workerflow.flow import Flow
from workerflow.notifier import Notifier
from workerflow.reraise import cleanup_then_reraise
from workerflow.retry import Attempt, Decision, History, Retry
from workerflow.scheduler import Scheduler
from workerflow.states import FlowState, check_flow_transition
from workerflow.storage import MemoryStorage, Storage

__all__ = ["Engine", "run"]

logger = logging.getLogger(__name__)

_SUSPENDED_FROM = "engine.suspended_from"

Outcome = Literal["done", "failed", "suspended", "reverted", "revert_failed"]


class Engine:
    """Runs one flow: ``run()`` to completion, or ``run_iter()`` to watch and suspend it.

    ``store`` holds the initial values tasks may read; ``executor`` runs task code (a
    :class:`SerialExecutor` by default, which the engine then also stops); ``storage`` keeps states
    and results (a fresh :class:`MemoryStorage` by default).
    """

    def __init__(
        self,
        flow: Flow,
        *,
        store: Mapping[str, Any] | None = None,
        executor: Executor | None = None,
        storage: Storage | None = None,
    ) -> None:
        self.flow = flow
        self.storage: Storage = storage if storage is not None else MemoryStorage()
        if store:
            self.storage.update_store(store)
        self._owns_executor = executor is None
        self.executor: Executor = executor if executor is not None else SerialExecutor()
        #: Flow states: ``callback(state, {"flow": name, "old_state": ...})``.
        self.notifier = Notifier()
        #: Task states and progress: ``callback(event, {"task": name, ...})``.
        self.atom_notifier = Notifier()
        self._compiled: CompiledFlow | None = None
        self._scheduler: Scheduler | None = None
        self._suspend = threading.Event()
        self._events: queue.SimpleQueue[Future[Any] | None] = queue.SimpleQueue()
        self._running = False
        self._running_lock = threading.Lock()
        self._retry_targets: list[Scope] | None = None  # decided for the current failures
        self._planned = False
        self._error: BaseException | None = None

    # -- public --------------------------------------------------------------------------------

    def compile(self) -> CompiledFlow:
        """Validate the flow (raising a CompilationError) and build its graph; done once."""
        if self._compiled is None:
            self._compiled = compile_flow(self.flow, self.storage.get_store().keys())
        return self._compiled

    @property
    def state(self) -> FlowState:
        """The flow's current state."""
        return self.storage.get_flow_state()

    @property
    def failures(self) -> dict[str, Failure]:
        """The task failures that made the flow fail (empty while it has not)."""
        if self._scheduler is None:
            return {}
        return self._scheduler.failures_by_name(self._scheduler.failures)

    @property
    def revert_failures(self) -> dict[str, Failure]:
        """The reverts that failed, by task name."""
        if self._scheduler is None:
            return {}
        return self._scheduler.failures_by_name(self._scheduler.revert_failures)

    def run(self) -> None:
        """Run the flow to the end (or until suspended); raise the original error if it failed."""
        for _ in self.run_iter():
            pass

    def suspend(self) -> None:
        """Ask a running flow to stop starting tasks and suspend once in-flight ones finish.

        Safe from any thread and from listeners. ``run()`` then returns; running again resumes
        without re-running finished tasks.
        """
        self._suspend.set()
        self._events.put(None)  # wake the engine if it waits

    def run_iter(self) -> Generator[FlowState, Any, None]:
        """Run the flow, yielding its state as it goes; ``send(True)`` suspends it.

        Raises the original exception at the end if the flow failed (after yielding the final
        state). Calling it on a suspended engine resumes; on a finished one it only reports.
        Closing the generator early waits for in-flight actions and leaves the flow SUSPENDED.
        """
        compiled = self.compile()
        state = self.storage.get_flow_state()
        if state == FlowState.SUCCESS:
            return
        if state in (FlowState.REVERTED, FlowState.FAILURE):
            raise self._exception()
        with self._running_lock:
            if self._running:
                raise RuntimeError(f"flow {compiled.name!r} is already running")
            self._running = True
        if self._scheduler is None:
            self._scheduler = Scheduler(
                compiled,
                storage=self.storage,
                executor=self.executor,
                atom_notifier=self.atom_notifier,
                events=self._events,
            )
        scheduler = self._scheduler
        self._suspend.clear()
        try:
            self.executor.start()
            yield from self._run(compiled, scheduler)
        except GeneratorExit:
            self._abandon(scheduler)
            raise
        except BaseException as exc:
            if exc is self._error:  # the flow's own failure, already handled
                raise
            with cleanup_then_reraise():
                self._abandon(scheduler)
        finally:
            self._running = False
            if self._owns_executor:
                self.executor.stop()

    # -- the run -------------------------------------------------------------------------------

    def _run(self, compiled: CompiledFlow, scheduler: Scheduler) -> Generator[FlowState, Any, None]:
        scheduler.load()
        phase = FlowState.RUNNING
        if self.storage.get_flow_state() == FlowState.SUSPENDED:
            phase = FlowState(self.storage.get_meta(_SUSPENDED_FROM, FlowState.RUNNING))
            yield from self._flow_to(FlowState.RESUMING)
        yield from self._flow_to(phase)
        if phase == FlowState.REVERTING:
            outcome = yield from self._revert(scheduler, [compiled.root])
            yield from self._finish_failed(outcome)
            return
        while True:
            outcome = yield from self._forward(scheduler)
            if outcome == "done":
                unfinished = [
                    n.name for n in compiled.nodes if scheduler.states[n.index] != "SUCCESS"
                ]
                if unfinished:  # a scheduler bug; never report success for it
                    raise RuntimeError(f"flow ended with tasks not run: {unfinished[:10]}")
                yield from self._flow_to(FlowState.SUCCESS)
                return
            if outcome == "suspended":
                yield from self._suspend_now(FlowState.RUNNING)
                return
            if not self._planned:  # decide once per failure, even across a suspension
                self._retry_targets = self._plan(scheduler)
                self._planned = True
            targets = self._retry_targets
            if targets is None:
                yield from self._flow_to(FlowState.REVERTING)
                outcome = yield from self._revert(scheduler, [compiled.root])
                yield from self._finish_failed(outcome)
                return
            outcome = yield from self._revert(scheduler, targets, suspendable=False)
            if outcome == "revert_failed":
                yield from self._flow_to(FlowState.FAILURE)
                raise self._exception()
            for scope in targets:
                scheduler.restart_scope(scope)
            self._planned = False

    def _forward(self, scheduler: Scheduler) -> Generator[FlowState, Any, Outcome]:
        """Start ready atoms up to capacity until all ran, one failed, or a suspend was asked."""
        capacity = scheduler.capacity
        inflight = scheduler.inflight
        ready = scheduler.ready
        failures = scheduler.failures
        suspending = self._suspend.is_set
        while True:
            halted = bool(failures) or suspending()
            if not halted:
                scheduler.fire_timers()
                while ready and len(inflight) < capacity:
                    scheduler.start(ready.popleft())
                    if failures or suspending():
                        break
            if not inflight:
                if failures:
                    return "failed"
                if suspending():
                    return "suspended"
                if not ready and not scheduler.timers:
                    return "done"
            # Retries wait in a timer heap: sleep no longer than the next one is due.
            timeout = None if halted else scheduler.next_timer()
            if inflight or timeout is not None:
                scheduler.wait(timeout)
            yield from self._yield(FlowState.RUNNING)

    def _revert(
        self, scheduler: Scheduler, scopes: list[Scope], *, suspendable: bool = True
    ) -> Generator[FlowState, Any, Outcome]:
        """Revert every atom that ran in ``scopes``, successors before predecessors."""
        scheduler.plan_revert(scopes)
        capacity = scheduler.capacity
        inflight = scheduler.inflight
        flow_state = self.storage.get_flow_state()
        while True:
            stopping = bool(scheduler.revert_failures) or (suspendable and self._suspend.is_set())
            while not stopping and scheduler.revert_ready and len(inflight) < capacity:
                scheduler.start_revert(scheduler.revert_ready.pop())
                stopping = bool(scheduler.revert_failures)
            if not inflight:
                if scheduler.revert_failures:
                    return "revert_failed"
                if scheduler.revert_done():
                    return "reverted"
                if stopping:
                    return "suspended"
            if inflight:
                scheduler.wait(None)
            yield from self._yield(flow_state)

    def _plan(self, scheduler: Scheduler) -> list[Scope] | None:
        """The retry scopes to revert and run again, or None when the whole flow fails.

        Each failure goes to the innermost controller above it; a controller that gives up
        passes it to the next one out. Reaching the top fails the flow.
        """
        nodes = scheduler.nodes
        in_scope: dict[int, dict[str, Failure]] = {}
        for i, failure in scheduler.failures.items():
            for scope in nodes[i].scope.chain():
                in_scope.setdefault(id(scope), {})[nodes[i].name] = failure
        decisions: dict[int, Decision] = {}
        targets: list[Scope] = []
        for i in scheduler.failures:
            for scope in nodes[i].scope.chain():
                if scope.controller is None:
                    return None
                decision = decisions.get(id(scope))
                if decision is None:
                    controller = nodes[scope.controller]
                    decision = self._decide(scheduler, controller, in_scope[id(scope)])
                    decisions[id(scope)] = decision
                if decision == Decision.RETRY:
                    if scope not in targets:
                        targets.append(scope)
                    break
        # A retried flow reverts the flows nested in it: keep only the outermost targets.
        return [t for t in targets if not any(s in targets for s in list(t.chain())[1:])]

    def _decide(
        self, scheduler: Scheduler, controller_node: Node, failures: dict[str, Failure]
    ) -> Decision:
        controller = controller_node.atom
        assert isinstance(controller, Retry)
        attempt = Attempt(self.storage.get_result(controller_node.name), failures)
        history = History((*scheduler.history(controller_node).attempts, attempt))
        try:
            arguments = scheduler.arguments(controller_node)
            decision = Decision(controller.on_failure(history, **arguments))
        except Exception:
            logger.exception("retry controller %r cannot decide; reverting", controller_node.name)
            return Decision.REVERT
        logger.info(
            "retry controller %r: %s after attempt %d", controller_node.name, decision, len(history)
        )
        if decision == Decision.RETRY:
            scheduler.record_attempt(controller_node, attempt)
        return decision

    # -- flow states and the outcome -------------------------------------------------------------

    def _finish_failed(self, outcome: Outcome) -> Generator[FlowState, Any, None]:
        if outcome == "suspended":
            yield from self._suspend_now(FlowState.REVERTING)
            return
        final = FlowState.REVERTED if outcome == "reverted" else FlowState.FAILURE
        yield from self._flow_to(final)
        raise self._exception()

    def _suspend_now(self, phase: FlowState) -> Generator[FlowState, Any, None]:
        self.storage.set_meta(_SUSPENDED_FROM, phase.value)
        yield from self._flow_to(FlowState.SUSPENDED)

    def _flow_to(self, target: FlowState) -> Generator[FlowState, Any, None]:
        self._set_flow_state(target)
        yield from self._yield(target)

    def _set_flow_state(self, target: FlowState) -> None:
        current = self.storage.get_flow_state()
        check_flow_transition(f"flow {self.flow.name!r}", current, target)
        self.storage.set_flow_state(target)
        if len(self.notifier):
            self.notifier.notify(target, {"flow": self.flow.name, "old_state": current})

    def _yield(self, state: FlowState) -> Generator[FlowState, Any, None]:
        sent = yield state
        if sent:
            self.suspend()

    def _exception(self) -> BaseException:
        """The exception a failed run raises: built once, with a note per failed revert."""
        if self._error is None:
            failures = list(self.failures.values())
            if not failures:  # e.g. a new engine on the storage of a finished run
                names = (n.name for n in self.compile().nodes)
                failures = [f for n in names if (f := self.storage.get_failure(n)) is not None]
            error = failures[0].to_exception() if len(failures) == 1 else WrappedFailure(failures)
            for name, failure in self.revert_failures.items():
                error.add_note(f"reverting task {name!r} failed too: {failure}")
            self._error = error
        return self._error

    def _abandon(self, scheduler: Scheduler) -> None:
        """Wait for in-flight actions, then leave a running flow SUSPENDED (resumable)."""
        scheduler.drain()
        phase = self.storage.get_flow_state()
        if phase in (FlowState.RUNNING, FlowState.REVERTING):
            self.storage.set_meta(_SUSPENDED_FROM, phase.value)
            self._set_flow_state(FlowState.SUSPENDED)


def run(
    flow: Flow,
    *,
    store: Mapping[str, Any] | None = None,
    executor: Executor | None = None,
    storage: Storage | None = None,
) -> dict[str, Any]:
    """Run ``flow`` to the end and return every stored value by name (see ``Engine``)."""
    engine = Engine(flow, store=store, executor=executor, storage=storage)
    engine.run()
    return engine.storage.fetch_all()
