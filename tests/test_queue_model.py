"""A model-based test of the queue (hypothesis.stateful).

Random submits at random priorities, cancels, pauses and resumes, and the running task
completing, failing for good or asking for a retry. One worker slot makes the dispatch
order observable. After every step: the task that started is the one the model says
(highest priority, then earliest eligibility, then submission order), nothing runs while
paused, and every status change any task went through is a legal transition.
"""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from vpsweb_tasks import Retry, TaskContext, TaskDefinition, TaskManager, TaskPriority, TaskStatus
from vpsweb_tasks.errors import TaskStateError
from vpsweb_tasks.models import LEGAL_TRANSITIONS

from .conftest import FakeClock, make_settings

MAX_RETRIES = 2


class Model:
    """What the queue should hold: per task its status and its place in line."""

    def __init__(self) -> None:
        self.status: dict[str, TaskStatus] = {}
        self.key: dict[str, tuple[int, float, int]] = {}  # (-priority, eligible at, seq)
        self.seq = 0

    def waiting(self) -> list[str]:
        return [t for t, s in self.status.items() if s.is_waiting]

    def next_to_run(self) -> str | None:
        waiting = self.waiting()
        return min(waiting, key=self.key.__getitem__) if waiting else None


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.exits = ExitStack()
        folder = Path(self.exits.enter_context(tempfile.TemporaryDirectory()))
        self.portal = self.exits.enter_context(anyio.from_thread.start_blocking_portal("asyncio"))
        self.clock = FakeClock()
        self.model = Model()
        self.paused = False
        self.verdicts: dict[str, tuple[anyio.Event, list[str]]] = {}
        self.closing = False
        self.started: list[str] = []
        self.finished: set[tuple[str, str]] = set()  # (event kind, task id)
        self.seen: dict[str, list[TaskStatus]] = {}
        self.signal = self.portal.call(_new_event)
        manager = TaskManager(
            make_settings(
                folder,
                background_tasks={"max_concurrent_jobs": 1, "lease_seconds": 1e6},
                logging={"file": None},
            ),
            clock=self.clock,
        )
        manager.register("work", self._work)
        manager.events.add_listener(self._on_event)
        self.manager = self.exits.enter_context(self.portal.wrap_async_context_manager(manager))

    def teardown(self) -> None:
        self.portal.call(self._release_all)
        self.exits.close()

    def _release_all(self) -> None:
        """Completes every held task, in one step of the event loop: a task that starts
        once a held one ends must not add to ``verdicts`` while they are being released,
        so it finishes at once (``closing``)."""
        self.closing = True
        for event, verdict in self.verdicts.values():
            verdict.append("complete")
            event.set()

    # --- the task the queue runs ------------------------------------------------------

    async def _work(self, context: TaskContext) -> str:
        if self.closing:
            return "done"
        event = anyio.Event()
        verdict: list[str] = []
        self.verdicts[context.task_id] = (event, verdict)
        self.started.append(context.task_id)
        self._poke()
        await event.wait()
        if verdict[0] == "retry":
            raise Retry(delay=0)
        if verdict[0] == "fail":
            raise ValueError("not retryable")
        return "done"

    # --- helpers ----------------------------------------------------------------------

    def _on_event(self, event: Any) -> None:
        if event.task_id is not None:
            self.finished.add((event.kind, event.task_id))
        self._poke()

    def _poke(self) -> None:
        self.signal.set()
        self.signal = anyio.Event()

    def _until(self, done: Any) -> None:
        """Wait (on events the queue publishes, never on a timer) until ``done()``."""

        async def wait() -> None:
            with anyio.fail_after(10):
                while not done():
                    await self.signal.wait()

        self.portal.call(wait)

    def _settle(self, before: int) -> None:
        """Let the dispatcher take its next look at the queue, then check who started
        since ``before`` (the count of starts when the step began)."""
        expected = None if self.paused or self._running() else self.model.next_to_run()
        self.portal.call(self.manager.queue.next_round)
        if expected is None:
            assert len(self.started) == before, "a task started while none should"
            return
        self._until(lambda: len(self.started) > before)
        assert self.started[before:] == [expected], "dispatch order differs from the model"
        self.model.status[expected] = TaskStatus.RUNNING

    def _running(self) -> str | None:
        running = [t for t, s in self.model.status.items() if s is TaskStatus.RUNNING]
        return running[0] if running else None

    def _tick(self) -> None:
        self.clock.advance(1.0)

    # --- rules --------------------------------------------------------------------------

    @rule(priority=st.sampled_from(list(TaskPriority)))
    def submit(self, priority: TaskPriority) -> None:
        before = len(self.started)
        self._tick()
        definition = TaskDefinition(
            name="t", task_type="work", priority=priority, max_retries=MAX_RETRIES
        )
        context = self.portal.call(self.manager.submit, definition)
        self.model.status[context.task_id] = TaskStatus.PENDING
        self.model.key[context.task_id] = (-priority.rank, self.clock.now, self.model.seq)
        self.model.seq += 1
        self._settle(before)

    @precondition(lambda self: self._running() is not None)
    @rule(outcome=st.sampled_from(["complete", "fail", "retry"]))
    def finish_running(self, outcome: str) -> None:
        before = len(self.started)
        self._tick()
        task_id = self._running()
        assert task_id is not None
        event, verdict = self.verdicts.pop(task_id)
        verdict.append(outcome)
        attempts = self.started.count(task_id)
        if outcome == "retry" and attempts > MAX_RETRIES:
            outcome = "fail"  # retries exhausted: Retry() now dead-letters the task
        kind, status = {
            "complete": ("task_completed", TaskStatus.COMPLETED),
            "fail": ("task_dead_lettered", TaskStatus.FAILED),
            "retry": ("task_retry_scheduled", TaskStatus.RETRYING),
        }[outcome]
        self.portal.call(event.set)
        self._until(lambda: (kind, task_id) in self.finished)
        self.finished.discard((kind, task_id))
        if status is TaskStatus.RETRYING:
            # A retry is eligible from now: it lines up behind earlier eligible tasks.
            rank, _, seq = self.model.key[task_id]
            self.model.key[task_id] = (rank, self.clock.now, seq)
        self.model.status[task_id] = status
        self._settle(before)

    @precondition(lambda self: bool(self.model.status))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        before = len(self.started)
        self._tick()
        # Draw by submission order: task ids are random, so sorting them is not stable.
        task_id = data.draw(st.sampled_from(list(self.model.status)))
        status = self.model.status[task_id]
        if status.is_terminal:
            try:
                self.portal.call(self.manager.cancel, task_id)
            except TaskStateError:
                return
            raise AssertionError("a finished task was cancelled")
        self.portal.call(self.manager.cancel, task_id)
        if status is TaskStatus.RUNNING:
            record = self.portal.call(self.manager.wait, task_id)
            assert record.status is TaskStatus.CANCELLED
            self.verdicts.pop(task_id, None)
        self.model.status[task_id] = TaskStatus.CANCELLED
        self._settle(before)

    @rule()
    def pause(self) -> None:
        before = len(self.started)
        self.portal.call(self.manager.pause)
        self.paused = True
        self._settle(before)

    @rule()
    def resume(self) -> None:
        before = len(self.started)
        self.portal.call(self.manager.resume)
        self.paused = False
        self._settle(before)

    @rule()
    def clear(self) -> None:
        before = len(self.started)
        cleared = self.portal.call(self.manager.clear)
        waiting = self.model.waiting()
        assert cleared == len(waiting)
        for task_id in waiting:
            self.model.status[task_id] = TaskStatus.CANCELLED
        self._settle(before)

    # --- invariants -----------------------------------------------------------------------

    @invariant()
    def one_worker_slot_means_at_most_one_running(self) -> None:
        assert sum(s is TaskStatus.RUNNING for s in self.model.status.values()) <= 1

    @invariant()
    def storage_agrees_with_the_model_and_transitions_are_legal(self) -> None:
        records = self.portal.call(self.manager.list_tasks)
        assert {r.id: r.status for r in records} == self.model.status
        for record in records:
            history = self.seen.setdefault(record.id, [TaskStatus.PENDING])
            if history[-1] is not record.status:
                assert record.status in LEGAL_TRANSITIONS[history[-1]], (history, record.status)
                history.append(record.status)


async def _new_event() -> anyio.Event:
    return anyio.Event()


QueueMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueueModel = QueueMachine.TestCase
