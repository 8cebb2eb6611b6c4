"""TaskManager and the queue, end to end on a real SQLite file in WAL mode."""

from __future__ import annotations

import gc
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from vpsweb_tasks import (
    ErrorCategory,
    HandlerUnavailableError,
    InvalidInputError,
    ManagerNotRunningError,
    QueueFullError,
    TaskContext,
    TaskDefinition,
    TaskManager,
    TaskPriority,
    TaskStateError,
    TaskStatus,
    UnknownTaskTypeError,
    get_task_manager,
    set_task_manager,
)
from vpsweb_tasks.collector import YOUNG_THRESHOLD
from vpsweb_tasks.config import Settings
from vpsweb_tasks.events import Event, TaskProgressed, TaskSubmitted
from vpsweb_tasks.manager import new_task_id
from vpsweb_tasks.models import ExecutionOutcome
from vpsweb_tasks.storage.ops import Step
from vpsweb_tasks.storage.types import NewTask
from vpsweb_tasks.translation import TranslationExtension
from vpsweb_tasks.translation.store import NewTranslationJob, insert_jobs

from .conftest import FakeClock, make_settings
from .support import EventRecorder

pytestmark = pytest.mark.anyio


def definition(task_type: str = "work", **fields: Any) -> TaskDefinition:
    return TaskDefinition(name=fields.pop("name", task_type), task_type=task_type, **fields)


async def test_submit_returns_after_the_task_is_durably_stored(
    manager: TaskManager, tmp_path: Path
) -> None:
    gate = anyio.Event()

    @manager.task("work")
    async def work(context: TaskContext) -> str:
        await gate.wait()
        return "done"

    context = await manager.submit(definition(), rows=3)
    # Another connection (as another process would) sees it at once.
    with sqlite3.connect(tmp_path / "tasks.db") as other:
        row = other.execute(
            "SELECT task_type, payload FROM background_tasks WHERE id = ?", (context.task_id,)
        ).fetchone()
    assert row == ("work", '{"rows":3}')
    gate.set()
    record = await context.wait(timeout=10)
    assert (record.status, record.result) == (TaskStatus.COMPLETED, "done")
    assert context.payload == {"rows": 3}


async def test_create_task_returns_at_once_and_stores_in_the_background(
    manager: TaskManager,
) -> None:
    async def closure(context: TaskContext) -> int:
        await context.update_progress(0.5, "half")
        return 7

    context = manager.create_task(definition("adhoc"), closure)
    assert context.status is TaskStatus.PENDING
    assert context.record is None  # not stored yet: create_task did not wait
    stored = await context.wait_stored()
    assert stored.id == context.task_id
    record = await context.wait(timeout=10)
    assert (record.status, record.result, record.progress) == (TaskStatus.COMPLETED, 7, 1.0)
    assert context.status is TaskStatus.COMPLETED


async def test_the_documents_custom_task_example_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VPSWEB_TASKS_CONFIG", raising=False)
    set_task_manager(None)

    # --- from the design document, "Custom Task Types", imports adjusted ---
    from vpsweb_tasks import TaskDefinition, TaskPriority, get_task_manager

    async def create_custom_task() -> str:
        task_manager = get_task_manager()

        task_def = TaskDefinition(
            name="Custom Data Processing",
            task_type="custom_processing",
            priority=TaskPriority.HIGH,
            max_retries=3,
            timeout_seconds=600,
            metadata={"input_source": "external_api", "output_destination": "database"},
        )

        async def custom_task_function(context: TaskContext) -> dict[str, Any]:
            # Your custom logic here
            await context.update_progress(0.1, "Starting processing")
            # ... processing steps ...
            await context.update_progress(1.0, "Processing complete")
            return {"status": "success", "records_processed": 100}

        context = task_manager.create_task(task_def, custom_task_function)
        return context.task_id

    # --- end of the example ---

    try:
        async with get_task_manager() as manager:
            task_id = await create_custom_task()
            record = await manager.wait(task_id, timeout=10)
        assert record.status is TaskStatus.COMPLETED
        assert record.result == {"status": "success", "records_processed": 100}
        assert record.message == "Processing complete"
        assert record.priority is TaskPriority.HIGH
        assert (tmp_path / "vpsweb_tasks.db").exists()
        assert f"task_id:{task_id}" in (tmp_path / "logs" / "repository.log").read_text()
    finally:
        set_task_manager(None)


async def test_dispatch_is_by_priority_then_fifo(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(background_tasks={"max_concurrent_jobs": 1})
    started: list[str] = []
    async with TaskManager(settings) as manager:

        @manager.task("work")
        async def work(context: TaskContext) -> None:
            started.append(context.definition.name)

        await manager.pause()
        plan = [
            ("l1", "low"),
            ("n1", "normal"),
            ("c1", "critical"),
            ("h1", "high"),
            ("n2", "normal"),
            ("h2", "high"),
            ("l2", "low"),
        ]
        contexts = [
            await manager.submit(definition(name=name, priority=TaskPriority(priority)))
            for name, priority in plan
        ]
        await manager.resume()
        for context in contexts:
            await context.wait(timeout=10)
    assert started == ["c1", "h1", "h2", "n1", "n2", "l1", "l2"]


async def test_plain_fifo_when_the_priority_queue_is_off(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(
        background_tasks={"max_concurrent_jobs": 1, "enable_priority_queue": False}
    )
    started: list[str] = []
    async with TaskManager(settings) as manager:

        @manager.task("work")
        async def work(context: TaskContext) -> None:
            started.append(context.definition.name)

        await manager.pause()
        contexts = [
            await manager.submit(definition(name=name, priority=TaskPriority(priority)))
            for name, priority in [("a", "low"), ("b", "critical"), ("c", "normal")]
        ]
        await manager.resume()
        for context in contexts:
            await context.wait(timeout=10)
    assert started == ["a", "b", "c"]


async def test_at_most_max_concurrent_jobs_run_at_once(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(background_tasks={"max_concurrent_jobs": 2})
    running = 0
    peak = 0
    two_running = anyio.Event()
    release = anyio.Event()
    async with TaskManager(settings) as manager:

        @manager.task("work")
        async def work(context: TaskContext) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            if running == 2:
                two_running.set()
            await release.wait()
            running -= 1

        contexts = [await manager.submit(definition()) for _ in range(5)]
        await two_running.wait()
        await manager.queue.next_round()
        assert (await manager.queue_status()).running == 2
        release.set()
        for context in contexts:
            await context.wait(timeout=10)
    assert peak == 2


async def test_a_task_past_its_timeout_is_stopped_and_classified(manager: TaskManager) -> None:
    stopped = anyio.Event()

    @manager.task("slow")
    async def slow(context: TaskContext) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            stopped.set()

    context = await manager.submit(definition("slow", timeout_seconds=0.05, max_retries=0))
    record = await context.wait(timeout=10)
    assert stopped.is_set()
    assert (record.status, record.error_category, record.error_type) == (
        TaskStatus.FAILED,
        ErrorCategory.TIMEOUT,
        "TaskTimeoutError",
    )


@pytest.mark.parametrize("source", ["task_timeouts", "job_timeout"])
async def test_timeout_precedence_in_the_queue(
    settings_factory: Callable[..., Settings], source: str
) -> None:
    tasks: dict[str, Any] = {"job_timeout": 60.0, "task_timeouts": {"slow": 60.0}}
    if source == "task_timeouts":
        tasks["task_timeouts"] = {"slow": 0.05}
    else:
        tasks = {"job_timeout": 0.05}
    async with TaskManager(settings_factory(background_tasks=tasks)) as manager:

        @manager.task("slow")
        async def slow(context: TaskContext) -> None:
            await anyio.sleep_forever()

        record = await (await manager.submit(definition("slow", max_retries=0))).wait(timeout=10)
    assert record.error_category is ErrorCategory.TIMEOUT


async def test_cancelling_a_running_task_really_stops_its_work(manager: TaskManager) -> None:
    started = anyio.Event()
    cleaned_up = anyio.Event()
    reached_the_end = False

    @manager.task("long")
    async def long(context: TaskContext) -> None:
        nonlocal reached_the_end
        started.set()
        try:
            await anyio.sleep_forever()
            reached_the_end = True
        finally:
            cleaned_up.set()

    context = await manager.submit(definition("long"))
    await started.wait()
    # It runs in this process: stopped by the time the answer comes, which says so.
    answer = await manager.cancel(context.task_id)
    assert (answer.status, answer.cancel_requested) == (TaskStatus.CANCELLED, False)
    assert cleaned_up.is_set()
    assert not reached_the_end
    record = await context.wait(timeout=10)
    assert record.status is TaskStatus.CANCELLED
    assert record.finished_at == answer.finished_at
    [execution] = await manager.list_executions(context.task_id)
    assert execution.outcome is ExecutionOutcome.CANCELLED


async def test_a_cancel_answers_requested_while_a_local_task_is_still_stopping(
    manager: TaskManager,
) -> None:
    started = anyio.Event()
    let_go = anyio.Event()

    @manager.task("stubborn")
    async def stubborn(context: TaskContext) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):  # a long clean-up
                await let_go.wait()

    manager.LOCAL_STOP_WAIT = 0.05
    context = await manager.submit(definition("stubborn"))
    await started.wait()
    answer = await manager.cancel(context.task_id)
    # Not stopped yet: never a bare "running", but a cancel requested of a running task.
    assert (answer.status, answer.cancel_requested) == (TaskStatus.RUNNING, True)
    let_go.set()
    assert (await context.wait(timeout=10)).status is TaskStatus.CANCELLED


async def test_cancel_of_a_pending_task_means_it_never_runs(manager: TaskManager) -> None:
    ran = False

    @manager.task("work")
    async def work(context: TaskContext) -> None:
        nonlocal ran
        ran = True

    await manager.pause()
    context = await manager.submit(definition())
    record = await manager.cancel(context.task_id)
    assert record.status is TaskStatus.CANCELLED
    await manager.resume()
    await manager.queue.next_round()
    assert not ran
    assert (await context.wait(timeout=1)).status is TaskStatus.CANCELLED


async def test_a_finished_task_cannot_be_cancelled_or_changed(manager: TaskManager) -> None:
    @manager.task("work")
    async def work(context: TaskContext) -> str:
        return "kept"

    context = await manager.submit(definition())
    await context.wait(timeout=10)
    with pytest.raises(TaskStateError, match="completed"):
        await manager.cancel(context.task_id)
    assert await manager.clear() == 0
    record = await manager.get_task(context.task_id)
    assert (record.status, record.result) == (TaskStatus.COMPLETED, "kept")


async def test_pause_stops_dispatch_and_resume_restarts_it(manager: TaskManager) -> None:
    @manager.task("work")
    async def work(context: TaskContext) -> str:
        return "ran"

    await manager.pause(reason="deploying")
    context = await manager.submit(definition())
    await manager.queue.next_round()
    await manager.queue.next_round()
    status = await manager.queue_status()
    assert (status.paused, status.pause_reason, status.pending) == (True, "deploying", 1)
    await manager.resume()
    assert (await context.wait(timeout=10)).result == "ran"
    assert not (await manager.queue_status()).paused


async def test_clear_cancels_every_waiting_task(manager: TaskManager) -> None:
    @manager.task("work")
    async def work(context: TaskContext) -> None:
        return None

    await manager.pause()
    contexts = [await manager.submit(definition()) for _ in range(4)]
    assert await manager.clear() == 4
    await manager.resume()
    for context in contexts:
        assert (await context.wait(timeout=10)).status is TaskStatus.CANCELLED


async def test_a_full_queue_refuses_new_tasks_and_keeps_every_accepted_one(
    settings_factory: Callable[..., Settings],
) -> None:
    async with TaskManager(settings_factory(background_tasks={"max_queue_size": 3})) as manager:

        @manager.task("work")
        async def work(context: TaskContext) -> int:
            return int(context.payload["n"])

        await manager.pause()
        accepted = [await manager.submit(definition(), n=n) for n in range(3)]
        with pytest.raises(QueueFullError, match="max_queue_size=3"):
            await manager.submit(definition(), n=99)
        background = manager.create_task(definition(), "work")
        with pytest.raises(QueueFullError):
            await background.wait_stored()
        with pytest.raises(QueueFullError):
            await background.wait(timeout=1)
        assert len(await manager.list_tasks()) == 3
        await manager.resume()
        results = [(await context.wait(timeout=10)).result for context in accepted]
    assert results == [0, 1, 2]


async def test_a_linked_batch_is_stored_all_together_and_announced_after_its_commit(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(background_tasks={"max_queue_size": 3})
    async with TaskManager(settings, extensions=[TranslationExtension()]) as manager:

        @manager.task("work")
        async def work(context: TaskContext) -> int:
            return int(context.payload["n"])

        await manager.pause()
        recorder = EventRecorder()
        manager.events.add_listener(recorder)
        inserts: list[tuple[int, int]] = []

        def linked(tasks: Sequence[NewTask]) -> list[Step]:
            # (events announced so far, contexts that exist) when the batch is stored
            known = sum(manager.context(task.id) is not None for task in tasks)
            inserts.append((len(recorder.of(TaskSubmitted)), known))
            jobs = [
                (task, NewTranslationJob(task.id, "English", "Polish", "hybrid", "x"))
                for task in tasks
            ]
            return [insert_jobs(jobs)]

        contexts = await manager.submit_batch(
            [definition(name=f"t{n}") for n in range(2)],
            payloads=[{"n": 0}, {"n": 1}],
            linked=linked,
        )
        assert inserts == [(0, 2)]
        assert [e.task_id for e in recorder.of(TaskSubmitted)] == [c.task_id for c in contexts]
        assert [c.record.status if c.record else None for c in contexts] == [TaskStatus.PENDING] * 2
        # Room for one more task: a batch of two is refused whole.
        with pytest.raises(QueueFullError, match="no room for 2 tasks: 2 waiting"):
            await manager.submit_batch([definition(), definition()], linked=linked)
        # An invalid member is refused before anything is stored.
        with pytest.raises(UnknownTaskTypeError):
            await manager.submit_batch([definition(), definition("nope")], linked=linked)
        with pytest.raises(ValueError, match="2 payloads for 1 definitions"):
            await manager.submit_batch([definition()], payloads=[{}, {}], linked=linked)
        assert len(inserts) == 2
        assert len(recorder.of(TaskSubmitted)) == 2
        assert sum((await manager.store.count_tasks()).values()) == 2
        await manager.resume()
        results = [(await context.wait(timeout=10)).result for context in contexts]
    assert results == [0, 1]


async def test_listeners_get_every_progress_update_and_storage_gets_them_coalesced(
    manager: TaskManager,
) -> None:
    seen: list[float] = []

    def listener(event: Event) -> None:
        if isinstance(event, TaskProgressed) and event.update is not None:
            seen.append(event.update.progress)

    manager.events.add_listener(listener, kinds={"task_progressed"})

    @manager.task("chatty")
    async def chatty(context: TaskContext) -> None:
        for i in range(1, 1001):
            await context.update_progress(i / 1000, "working")
        await context.update_progress(1.0, "done")

    context = await manager.submit(definition("chatty"))
    record = await context.wait(timeout=30)
    assert seen == [i / 1000 for i in range(1, 1001)] + [1.0]
    history = await manager.store.progress_history(context.task_id)
    assert 1 <= len(history) <= 10
    assert (history[-1].progress, history[-1].message) == (1.0, "done")
    assert record.message == "done"


async def test_invalid_progress_is_refused(manager: TaskManager) -> None:
    errors: list[str] = []

    @manager.task("work")
    async def work(context: TaskContext) -> None:
        for bad in (1.5, -0.1, float("nan")):
            with pytest.raises(ValueError, match="between 0 and 1"):
                await context.update_progress(bad)
            errors.append(str(bad))

    await (await manager.submit(definition())).wait(timeout=10)
    assert len(errors) == 3


async def test_a_failed_attempt_is_retried_durably(manager: TaskManager) -> None:
    @manager.task("flaky")
    async def flaky(context: TaskContext) -> str:
        if context.attempt == 1:
            raise ConnectionError("refused")
        return "second time lucky"

    context = await manager.submit(definition("flaky"))
    record = await context.wait(timeout=10)
    assert (record.status, record.result, record.attempts) == (
        TaskStatus.COMPLETED,
        "second time lucky",
        2,
    )
    executions = await manager.list_executions(context.task_id)
    assert [(e.outcome, e.error_category) for e in executions] == [
        (ExecutionOutcome.FAILED, ErrorCategory.NETWORK),
        (ExecutionOutcome.COMPLETED, None),
    ]


async def test_validation_errors_are_not_retried(manager: TaskManager) -> None:
    @manager.task("strict")
    async def strict(context: TaskContext) -> None:
        raise ValueError("bad input")

    record = await (await manager.submit(definition("strict", max_retries=5))).wait(timeout=10)
    assert (record.status, record.attempts, record.error_category) == (
        TaskStatus.FAILED,
        1,
        ErrorCategory.VALIDATION,
    )


async def test_a_result_that_is_not_json_fails_the_task_clearly(manager: TaskManager) -> None:
    @manager.task("odd")
    async def odd(context: TaskContext) -> object:
        return object()

    record = await (await manager.submit(definition("odd"))).wait(timeout=10)
    assert (record.status, record.error_type) == (TaskStatus.FAILED, "ResultNotSerializableError")


async def test_unknown_task_types_and_bad_payloads_are_refused(manager: TaskManager) -> None:
    with pytest.raises(
        UnknownTaskTypeError,
        match=r"registered types: backup, cleanup, data_processing, maintenance$",
    ):
        await manager.submit(definition("nope"))
    manager.register("work", _noop)
    with pytest.raises(InvalidInputError, match="payload: must be JSON") as raised:
        await manager.submit(definition(), when=object())
    assert raised.value.field == "payload"
    assert isinstance(raised.value, ValueError)
    assert await manager.list_tasks() == []


async def test_closures_need_workers_in_this_process(
    settings_factory: Callable[..., Settings],
) -> None:
    async with TaskManager(settings_factory(background_tasks={"enabled": False})) as manager:
        with pytest.raises(HandlerUnavailableError, match="register its type"):
            await manager.submit(definition("adhoc"), _noop)


async def test_registered_tasks_run_after_a_restart(
    settings_factory: Callable[..., Settings],
) -> None:
    api_only = settings_factory(background_tasks={"enabled": False})
    async with TaskManager(api_only) as manager:
        manager.register("work", _noop)
        context = await manager.submit(definition())
    async with TaskManager(settings_factory()) as manager:
        manager.register("work", _noop)
        record = await manager.wait(context.task_id, timeout=10)
    assert record.status is TaskStatus.COMPLETED


async def test_graceful_shutdown_releases_unfinished_tasks_without_losing_an_attempt(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(background_tasks={"shutdown_grace_period": 0.05})
    started = anyio.Event()
    async with TaskManager(settings) as manager:

        @manager.task("long")
        async def long(context: TaskContext) -> None:
            started.set()
            await anyio.sleep_forever()

        context = await manager.submit(definition("long"))
        await started.wait()
    async with TaskManager(settings) as again:
        record = await again.get_task(context.task_id)
        assert (record.status, record.attempts) == (TaskStatus.PENDING, 0)
        [execution] = await again.list_executions(context.task_id)
        assert execution.outcome is ExecutionOutcome.INTERRUPTED
        again.register("long", _noop)
        final = await again.wait(context.task_id, timeout=10)
    assert (final.status, final.attempts) == (TaskStatus.COMPLETED, 1)


async def test_the_process_wide_manager(settings_factory: Callable[..., Settings]) -> None:
    """The default is the manager the app sets; a manager never makes itself the default
    by starting (SPEC 1), and without one set, the first call makes one."""
    set_task_manager(None)
    try:
        manager = TaskManager(settings_factory())
        with pytest.raises(ManagerNotRunningError):
            manager.create_task(definition(), _noop)
        async with manager:
            assert get_task_manager() is not manager
        set_task_manager(manager)
        assert get_task_manager() is manager
        set_task_manager(None)
        made = get_task_manager()
        assert made is not manager
        assert get_task_manager() is made
    finally:
        set_task_manager(None)


async def _noop(context: TaskContext) -> None:
    return None


def test_settings_factory_points_at_tmp(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    assert settings.storage.sqlite_path == tmp_path / "tasks.db"


async def test_a_task_group_torn_down_under_a_task_still_gives_its_attempt_back(
    settings_factory: Callable[..., Settings],
) -> None:
    """Not a graceful stop: a crash elsewhere tears the manager's task group down while a
    task runs. The runner is cancelled with it, yet its buffered progress and the attempt's
    outcome are written before it goes: the task is waiting again with its attempt given
    back and its progress kept, no lease to wait out."""
    settings = settings_factory()
    started = anyio.Event()

    async def crash() -> None:
        raise RuntimeError("a crash elsewhere in the task group")

    task_ids: list[str] = []

    async def run_until_torn_down() -> None:
        async with TaskManager(settings) as manager:

            @manager.task("long")
            async def long(context: TaskContext) -> None:
                await context.update_progress(0.5, "half way")  # buffered, not yet stored
                started.set()
                await anyio.sleep_forever()

            task_ids.append((await manager.submit(definition("long"))).task_id)
            await started.wait()
            assert manager._tg is not None
            manager._tg.start_soon(crash)
            await anyio.sleep_forever()

    with pytest.raises(ExceptionGroup) as raised:
        await run_until_torn_down()
    assert raised.group_contains(RuntimeError)
    async with TaskManager(settings) as again:
        record = await again.get_task(task_ids[0])
        assert (record.status, record.attempts, record.lease_owner) == (
            TaskStatus.PENDING,
            0,
            None,
        )
        assert (record.progress, record.message) == (0.5, "half way")
        [execution] = await again.list_executions(task_ids[0])
        assert execution.outcome is ExecutionOutcome.INTERRUPTED


def test_task_ids_are_uuid7_strings_in_time_order() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_task_id() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for task_id in ids:
        parsed = uuid.UUID(task_id)
        assert str(parsed) == task_id  # canonical: lower-case hex, dashes in place
        assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
        assert before <= parsed.int >> 80 <= after  # the leading 48 bits: milliseconds
    stamps = [uuid.UUID(task_id).int >> 80 for task_id in ids]
    assert stamps == sorted(stamps)


async def test_a_heartbeat_about_an_ended_attempt_does_not_stop_the_next_one(
    settings_factory: Callable[..., Settings],
) -> None:
    """A heartbeat sent while attempt 1 ran answers after attempt 1 failed and the retry
    (due at once) was claimed: the answer says attempt 1's lease is gone, which must not
    stop attempt 2 (found in CI: the retry then sat `running` until its lease expired)."""
    settings = settings_factory(background_tasks={"retry_delay": 0})
    sent_first, second_started, answered = anyio.Event(), anyio.Event(), anyio.Event()
    async with TaskManager(settings) as manager:
        heartbeat = manager.store.heartbeat

        async def slow_heartbeat(**kwargs: Any) -> Any:
            if any(token.fence == 1 for token in kwargs["running"]):
                sent_first.set()
                await second_started.wait()  # answered only once attempt 2 runs
                result = await heartbeat(**kwargs)
                answered.set()
                return result
            return await heartbeat(**kwargs)

        manager.store.heartbeat = slow_heartbeat  # type: ignore[method-assign]

        @manager.task("flaky")
        async def flaky(context: TaskContext) -> str:
            if context.attempt == 1:
                await sent_first.wait()
                raise ConnectionError("first attempt fails; the retry is due at once")
            second_started.set()
            await answered.wait()
            await anyio.lowlevel.checkpoint()  # a stop would land here
            return "second"

        context = await manager.submit(TaskDefinition(name="f", task_type="flaky"))
        record = await context.wait(timeout=10)
    assert (record.status, record.result, record.attempts) == (TaskStatus.COMPLETED, "second", 2)


async def test_leases_are_renewed_while_a_shutdown_drains_running_tasks(
    settings_factory: Callable[..., Settings],
) -> None:
    """A task still running in the grace period keeps its lease: a grace period longer
    than a lease must not let other workers reap it as lost."""
    clock = FakeClock()
    settings = settings_factory(
        background_tasks={
            "lease_seconds": 0.6,
            "queue_check_interval": 0.05,
            "shutdown_grace_period": 30.0,
        }
    )
    started, release, renewed_while_draining = anyio.Event(), anyio.Event(), anyio.Event()

    renewals_while_draining = 0
    async with anyio.create_task_group() as tg, TaskManager(settings, clock=clock) as manager:
        renew = manager.store.heartbeat

        async def heartbeat(**kwargs: Any) -> Any:
            result = await renew(**kwargs)
            nonlocal renewals_while_draining
            if manager._queue._stopping and kwargs.get("running"):
                renewals_while_draining += 1
                if renewals_while_draining == 2:  # not only one already on its way
                    renewed_while_draining.set()
            return result

        manager.store.heartbeat = heartbeat  # type: ignore[method-assign]

        @manager.task("drains")
        async def drains(context: TaskContext) -> None:
            started.set()
            await release.wait()

        async def while_draining() -> None:
            assert manager._queue._stopping  # the manager's stop began before this ran
            clock.advance(100.0)  # the first lease is long gone by the clock
            with anyio.fail_after(20):
                await renewed_while_draining.wait()
            record = await manager.store.get_task(context.task_id)
            assert record is not None
            assert record.lease_expires_at is not None
            assert record.lease_expires_at.timestamp() > clock()
            release.set()

        context = await manager.submit(definition("drains"))
        await started.wait()
        tg.start_soon(while_draining)  # runs once leaving this block has begun the stop
    async with TaskManager(settings) as again:
        final = await again.get_task(context.task_id)
    assert (final.status, final.attempts, final.lost_attempts) == (TaskStatus.COMPLETED, 1, 0)


@pytest.fixture
def collector_restored() -> Iterator[tuple[int, int, int]]:
    """The garbage collector's thresholds and frozen objects, as they were, put back."""
    before = gc.get_threshold()
    yield before
    gc.unfreeze()
    gc.set_threshold(*before)


async def test_an_embedded_manager_leaves_the_garbage_collector_alone_unless_asked(
    tmp_path: Path, collector_restored: tuple[int, int, int]
) -> None:
    frozen = gc.get_freeze_count()
    async with TaskManager(make_settings(tmp_path)):
        assert (gc.get_threshold(), gc.get_freeze_count()) == (collector_restored, frozen)
    asked = make_settings(tmp_path, background_tasks={"gc_tuning": True})
    async with TaskManager(asked):
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *collector_restored[1:])
        assert gc.get_freeze_count() > frozen
