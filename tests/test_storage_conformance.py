"""The storage contract (vpsweb_tasks/storage/base.py), operation by operation.

Every backend runs this whole module (the ``backend`` fixture in conftest.py). Time is
passed in explicitly, so nothing here sleeps.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.to_thread import run_sync

from vpsweb_tasks.errors import (
    DependencyNotFoundError,
    DuplicateScheduleError,
    ErrorCategory,
    IdempotencyKeyError,
    LeaseLostError,
    QueueFullError,
    ScheduleNotFoundError,
    TaskNotFoundError,
    TaskStateError,
)
from vpsweb_tasks.models import (
    ExecutionOutcome,
    ExecutionRecord,
    ResourceSample,
    TaskPriority,
    TaskRecord,
    TaskStatus,
    to_datetime,
)
from vpsweb_tasks.schedules import Missed, ScheduleDefinition, ScheduleRecord
from vpsweb_tasks.storage import logic
from vpsweb_tasks.storage._dbthread import Mode
from vpsweb_tasks.storage.base import TaskStore
from vpsweb_tasks.storage.ops import Mode as OpMode
from vpsweb_tasks.storage.ops import Op, operation, script
from vpsweb_tasks.storage.queries import CORE, Component, Migration
from vpsweb_tasks.storage.sqlite import SQLiteTaskStore
from vpsweb_tasks.storage.types import (
    Cancelled,
    Claim,
    ClaimLimits,
    Completed,
    Deferred,
    Failed,
    LeaseToken,
    NewTask,
    ProgressSnapshot,
    RateSpec,
    ReapResult,
    Released,
    RetryDecider,
    ScheduleFiring,
    SharedBreakerState,
    WorkerInfo,
    dispatch_key,
)

from .conftest import POSTGRES_DSN, new_task

pytestmark = pytest.mark.anyio

T0 = 1_800_000_000.0
LEASE = 30.0
#: The bound on lost attempts the reaper is given, unless a test says otherwise.
MAX_LOST = 3


def worker(worker_id: str = "w1") -> WorkerInfo:
    return WorkerInfo(worker_id=worker_id, hostname="test-host", pid=1)


async def cleanup(store: TaskStore, *, before: float) -> int:
    """Retention cleanup as the manager runs it: finished tasks, then resource samples."""
    deleted = 0
    while batch := await store.run(logic.delete_finished(before=before)):
        deleted += batch
    await store.run(logic.delete_samples(before=before))
    return deleted


async def reap(
    store: TaskStore,
    *,
    now: float,
    decide: RetryDecider,
    max_lost_attempts: int = MAX_LOST,
    expired: Sequence[str] = (),
) -> ReapResult:
    return await store.reap(
        now=now, decide=decide, max_lost_attempts=max_lost_attempts, expired=expired
    )


async def claim_one(store: TaskStore, worker_id: str = "w1", now: float = T0):
    claims = await store.claim(worker_id=worker_id, now=now, lease_seconds=LEASE, limit=1)
    assert len(claims) == 1
    return claims[0]


# --- submit and read ---------------------------------------------------------------------


async def test_add_task_stores_a_pending_task(store: TaskStore) -> None:
    task = new_task(T0, payload={"n": 1}, metadata={"source": "x"}, timeout_seconds=5.0)
    record = await store.add_task(task)
    assert record.id == task.id
    assert record.status is TaskStatus.PENDING
    assert record.priority is TaskPriority.NORMAL
    assert record.payload == {"n": 1}
    assert record.metadata == {"source": "x"}
    assert record.timeout_seconds == 5.0
    assert record.attempts == 0
    assert record.created_at.timestamp() == T0
    assert await store.get_task(task.id) == record


async def test_a_tasks_trace_context_is_kept_for_its_attempts(store: TaskStore) -> None:
    """The submit's trace context (OpenTelemetry's propagation fields) is stored with the
    task, alone or in a batch, and handed to the worker that claims it."""
    context = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "congo=t61rcWkgMzE",
    }
    alone = new_task(T0, trace_context=context)
    batch = [new_task(T0 + 0.001, trace_context={"traceparent": "00-1-2-01"}), new_task(T0 + 0.002)]
    assert (await store.add_task(alone)).trace_context == context
    await store.add_tasks(batch)
    assert (await store.get_task(alone.id)) == alone.record()
    read = {r.id: r.trace_context for r in await store.get_tasks([t.id for t in batch])}
    assert read == {batch[0].id: {"traceparent": "00-1-2-01"}, batch[1].id: None}
    claims = await store.claim(worker_id="w1", now=T0 + 1, lease_seconds=LEASE, limit=10)
    assert [c.task.trace_context for c in claims] == [context, {"traceparent": "00-1-2-01"}, None]


def keyed(key: str, fingerprint: str = "f1", **fields: Any) -> NewTask:
    return new_task(T0, idempotency_key=key, request_fingerprint=fingerprint, **fields)


async def test_a_repeated_idempotency_key_gets_the_first_task_and_stores_nothing(
    store: TaskStore,
) -> None:
    first = keyed("k1", payload={"n": 1})
    assert await store.add_keyed_tasks("k1", [first]) is None
    stored = await store.get_task(first.id)
    assert stored is not None
    assert stored.idempotency_key == "k1"
    again = await store.add_keyed_tasks("k1", [keyed("k1", payload={"n": 1})])
    assert again == [stored]
    assert (await store.count_tasks())[TaskStatus.PENDING] == 1
    # Even a full queue answers a repeat.
    assert await store.add_keyed_tasks("k1", [keyed("k1")], max_queue_size=1) == [stored]
    with pytest.raises(QueueFullError):
        await store.add_keyed_tasks("k2", [keyed("k2")], max_queue_size=1)


async def test_an_idempotency_key_reused_by_another_request_is_refused(store: TaskStore) -> None:
    first = keyed("k1", "f1")
    await store.add_keyed_tasks("k1", [first])
    other = keyed("k1", "f2")
    with pytest.raises(IdempotencyKeyError, match="'k1'") as refused:
        await store.add_keyed_tasks("k1", [other])
    assert refused.value.task_id == first.id
    assert await store.get_task(other.id) is None


async def test_a_batch_under_one_key_is_stored_and_replayed_whole(store: TaskStore) -> None:
    batch = [keyed(f"b#{i}", "fb") for i in range(3)]
    assert await store.add_keyed_tasks("b", batch) is None
    again = await store.add_keyed_tasks("b", [keyed(f"b#{i}", "fb") for i in range(3)])
    assert again is not None
    assert [r.id for r in again] == [t.id for t in batch]
    # A batch of another size under the key is another request.
    with pytest.raises(IdempotencyKeyError):
        await store.add_keyed_tasks("b", [keyed(f"b#{i}", "fc") for i in range(2)])
    # A key held by one task stops the whole batch: nothing of it is stored.
    mixed = [keyed("c#0", "fd"), keyed("b#1", "fd")]
    with pytest.raises(IdempotencyKeyError):
        await store.add_keyed_tasks("c", mixed)
    assert await store.get_task(mixed[0].id) is None


async def test_processes_racing_on_one_key_store_one_task(
    store_factory: Callable[..., TaskStore],
) -> None:
    """Two stores (two processes' connections) submit under one key at once, many times:
    one task, and every caller gets its id."""
    async with store_factory() as one, store_factory() as two:
        answers: list[str] = []

        async def submit(store: TaskStore) -> None:
            task = keyed("race")
            existing = await store.add_keyed_tasks("race", [task])
            answers.append(task.id if existing is None else existing[0].id)

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(submit, one if i % 2 else two)
        assert len(answers) == 20
        assert len(set(answers)) == 1
        assert (await one.count_tasks())[TaskStatus.PENDING] == 1


async def test_next_run_at_is_the_earliest_time_to_come_of_a_waiting_task(
    store: TaskStore,
) -> None:
    assert await store.run(logic.next_run_at(now=T0)) is None
    await store.add_task(new_task(T0, run_at=T0))  # due now: not to come
    await store.add_task(new_task(T0, run_at=T0 + 30, priority=0))
    await store.add_task(new_task(T0, run_at=T0 + 20, priority=3))
    await store.add_task(new_task(T0, run_at=T0 + 10, priority=1))
    assert await store.run(logic.next_run_at(now=T0)) == T0 + 10
    assert await store.run(logic.next_run_at(now=T0 + 10)) == T0 + 20
    assert await store.run(logic.next_run_at(now=T0 + 30)) is None
    claims = await store.claim(worker_id="w1", now=T0 + 15, lease_seconds=LEASE, limit=5)
    assert len(claims) == 2  # running tasks have no time to come
    assert await store.run(logic.next_run_at(now=T0)) == T0 + 20


async def test_get_task_of_unknown_id_is_none(store: TaskStore) -> None:
    assert await store.get_task("nope") is None
    assert await store.get_tasks(["nope"]) == []


async def test_adding_an_existing_id_is_refused(store: TaskStore) -> None:
    task = new_task(T0)
    await store.add_task(task)
    with pytest.raises(ValueError, match="already exists"):
        await store.add_task(task)


async def test_queue_limit_counts_waiting_tasks_and_stores_nothing_beyond(store: TaskStore) -> None:
    first, second = new_task(T0), new_task(T0)
    await store.add_task(first, max_queue_size=2)
    await store.add_task(second, max_queue_size=2)
    rejected = new_task(T0)
    with pytest.raises(QueueFullError) as caught:
        await store.add_task(rejected, max_queue_size=2)
    assert caught.value.limit == 2
    assert await store.get_task(rejected.id) is None
    # A running task is no longer waiting: there is room again.
    await claim_one(store)
    await store.add_task(rejected, max_queue_size=2)
    assert (await store.count_tasks())[TaskStatus.PENDING] == 2


async def test_list_and_count(store: TaskStore) -> None:
    a = await store.add_task(new_task(T0, task_type="a"))
    b = await store.add_task(new_task(T0 + 1, task_type="b", priority=3))
    await store.add_task(new_task(T0 + 2, task_type="a"))
    claim = await claim_one(store, now=T0 + 5)  # b: the highest priority
    assert claim.task.id == b.id
    assert [t.id for t in await store.list_tasks(statuses=[TaskStatus.RUNNING])] == [b.id]
    newest_first = await store.list_tasks(task_type="a")
    assert [t.created_at.timestamp() for t in newest_first] == [T0 + 2, T0]
    assert len(await store.list_tasks(limit=1, offset=1)) == 1
    counts = await store.count_tasks()
    assert counts[TaskStatus.PENDING] == 2
    assert counts[TaskStatus.RUNNING] == 1
    assert counts[TaskStatus.COMPLETED] == 0
    assert set(counts) == set(TaskStatus)
    assert {t.id for t in await store.get_tasks([a.id, b.id, "nope"])} == {a.id, b.id}


# --- what storage cannot hold ------------------------------------------------------------

#: Text no row can hold: PostgreSQL's text has no NUL, and a lone surrogate is not Unicode.
UNHOLDABLE = ["\x00", "a\x00b", "\udfff", "a\ud800b"]
#: Values the boundary accepts (vpsweb_tasks.validation) that are odd all the same.
ODD_BUT_VALID: list[Any] = [
    "a\x00b",  # NUL inside a JSON string: the escape \u0000
    "\u2028\u2029 \U0001d11e é 中文",
    10**400,
    -0.0,
    1e308,
    {"fn": 1, "definition": 2, "self": 3, "": None, " ": [True, False]},
]


def deep(depth: int) -> Any:
    value: Any = {}
    for _ in range(depth - 1):
        value = {"d": value}
    return value


async def test_ids_and_types_no_row_can_have_match_nothing(store: TaskStore) -> None:
    failed = new_task(T0)
    await store.add_task(failed)
    claim = await claim_one(store)
    await store.finish(claim, Failed("E", "x", ErrorCategory.UNKNOWN), now=T0 + 1)
    for key in UNHOLDABLE:
        assert await store.get_task(key) is None
        assert await store.get_tasks([key, failed.id]) == [await store.get_task(failed.id)]
        assert await store.list_executions(key) == []
        assert await store.progress_history(key) == []
        assert await store.list_tasks(task_type=key) == []
        with pytest.raises(TaskNotFoundError):
            await store.request_cancel(key, now=T0 + 2)
        assert await store.requeue_failed(now=T0 + 2, task_ids=[key]) == []
        assert await store.requeue_failed(now=T0 + 2, task_type=key) == []
    assert (await store.get_task(failed.id)).status is TaskStatus.FAILED  # type: ignore[union-attr]


async def test_odd_but_valid_values_read_back_as_stored(store: TaskStore) -> None:
    """Whatever the boundary accepts comes back equal, and as text every answer can encode
    (UTF-8 JSON): nothing stored can fail to be read."""
    payload = {f"k{i}": value for i, value in enumerate(ODD_BUT_VALID)} | {"deep": deep(63)}
    task = new_task(T0, name="\u2028 é 中文 \U0001d11e", payload=payload, metadata=payload)
    await store.add_task(task)
    claim = await claim_one(store, now=T0 + 1)
    await store.save_progress(
        [ProgressSnapshot(task.id, 0.5, "odd \u2028 é", {"fn": "a\x00b"}, T0 + 2)]
    )
    done = await store.finish(claim, Completed(payload), now=T0 + 3)
    for record in (done, await store.get_task(task.id)):
        assert record is not None
        assert (record.name, record.payload, record.metadata, record.result) == (
            task.name,
            payload,
            payload,
            payload,
        )
        encoded = json.dumps([record.payload, record.metadata, record.result, record.name])
        assert json.loads(encoded) == [payload, payload, payload, task.name]
    [snapshot] = await store.progress_history(task.id)
    assert (snapshot.message, snapshot.metadata) == ("odd \u2028 é", {"fn": "a\x00b"})


async def test_json_stored_before_validation_reads_back_written_out(store: TaskStore) -> None:
    """A database written before these checks may hold a lone surrogate's escape in its
    JSON columns: it reads back written out (every answer can encode it), not as a string
    that breaks every list holding the task."""
    legacy = {"k": "\udfff", "\ud800key": ["ok \U0001d11e", {"deep": "x\udc00"}]}
    task = new_task(T0, payload=legacy, metadata=legacy)  # storage itself does not check
    await store.add_task(task)
    expected = {"k": "\\udfff", "\\ud800key": ["ok \U0001d11e", {"deep": "x\\udc00"}]}
    for record in (await store.get_task(task.id), *(await store.list_tasks())):
        assert record is not None
        assert (record.payload, record.metadata) == (expected, expected)
        json.dumps([record.payload, record.metadata], ensure_ascii=False).encode("utf-8")


@pytest.mark.parametrize(
    "result",
    [{"x": "\udfff"}, {"\udfff": 1}, {"x": float("nan")}, {"x": float("inf")}, deep(65)],
    ids=["surrogate", "surrogate key", "nan", "inf", "too deep"],
)
def test_a_result_storage_cannot_hold_is_no_outcome(result: Any) -> None:
    with pytest.raises(ValueError, match=r"Unicode|JSON number|nests deeper"):
        Completed(result)


async def test_error_text_storage_cannot_hold_is_stored_written_out(store: TaskStore) -> None:
    """An error's text is whatever the failing code put in it (a file name with a lone
    surrogate, a NUL): it is stored written out, on every backend, and reads back."""
    for i, outcome in enumerate(
        [
            Failed(
                "Bad\udfffError", "file \udcff.txt: \x00", ErrorCategory.UNKNOWN, None, "tb \x00"
            ),
            Cancelled(reason="stop \x00 \udfff"),
            Deferred(retry_at=T0 + 60, reason="breaker \udfff\x00"),
        ]
    ):
        task = new_task(T0 + i)
        await store.add_task(task)
        claim = await claim_one(store, now=T0 + 10)
        finished = await store.finish(claim, outcome, now=T0 + 11)
        record = await store.get_task(task.id)
        assert record == finished
        [execution] = await store.list_executions(task.id)
        texts = [record.error_message, record.error_type, record.message, execution.error_message]
        for text in texts:
            assert text is None or ("\x00" not in text and text.encode("utf-8"))
    failed = await store.list_tasks(statuses=[TaskStatus.FAILED])
    assert [(r.error_type, r.error_message) for r in failed] == [
        ("Bad\\udfffError", "file \\udcff.txt: \\x00")
    ]


# --- claim ---------------------------------------------------------------------------------


async def test_claim_takes_highest_priority_first_then_fifo(store: TaskStore) -> None:
    order = [
        (0, "low-1"),
        (2, "high-1"),
        (1, "normal-1"),
        (3, "critical"),
        (2, "high-2"),
        (0, "low-2"),
    ]
    for i, (priority, name) in enumerate(order):
        await store.add_task(new_task(T0 + i * 0.001, priority=priority, name=name))
    claims = await store.claim(worker_id="w1", now=T0 + 1, lease_seconds=LEASE, limit=10)
    assert [c.task.name for c in claims] == [
        "critical",
        "high-1",
        "high-2",
        "normal-1",
        "low-1",
        "low-2",
    ]


def fifo_task(now: float, **fields: Any) -> NewTask:
    """A task stored for plain FIFO dispatch (``enable_priority_queue: false``)."""
    key = dispatch_key(now, fields.get("priority", 1), aging_seconds=None, by_priority=False)
    return new_task(now, dispatch_at=key, **fields)


async def test_claim_without_priority_is_plain_fifo(store: TaskStore) -> None:
    for i, priority in enumerate([0, 3, 1]):
        await store.add_task(fifo_task(T0 + i, priority=priority, name=str(i)))
    claims = await store.claim(worker_id="w1", now=T0 + 5, lease_seconds=LEASE, limit=3)
    assert [c.task.name for c in claims] == ["0", "1", "2"]


@pytest.mark.parametrize("typed", [False, True])
async def test_fifo_across_priorities_is_run_at_then_insertion_order(
    store: TaskStore, typed: bool
) -> None:
    """Ties in ``run_at`` across priorities, claimed a few at a time: priority plays no
    part, and each claim continues where the last one stopped."""
    names = [f"t{i}" for i in range(12)]
    for i, name in enumerate(names):
        await store.add_task(fifo_task(T0 + i // 2, priority=(i * 7) % 4, name=name))
    claimed: list[str] = []
    while batch := await store.claim(
        worker_id="w1",
        now=T0 + 10,
        lease_seconds=LEASE,
        limit=5,
        task_types={"work"} if typed else None,
    ):
        claimed += [c.task.name for c in batch]
    assert claimed == names


async def test_fifo_among_equal_times_is_insertion_order(store: TaskStore) -> None:
    names = [f"t{i}" for i in range(20)]
    for name in names:
        await store.add_task(new_task(T0, name=name))
    claims = await store.claim(worker_id="w1", now=T0, lease_seconds=LEASE, limit=20)
    assert [c.task.name for c in claims] == names


async def test_a_retried_task_lines_up_behind_tasks_eligible_before_it(store: TaskStore) -> None:
    await store.add_task(new_task(T0, name="first"))
    await store.add_task(new_task(T0 + 1, name="second"))
    first = await claim_one(store, now=T0 + 1)
    assert first.task.name == "first"
    failure = Failed("E", "again", ErrorCategory.NETWORK, retry_at=T0 + 2)
    await store.finish(first, failure, now=T0 + 2)
    assert (await claim_one(store, now=T0 + 5)).task.name == "second"
    assert (await claim_one(store, now=T0 + 5)).task.name == "first"


async def test_claim_marks_running_with_a_lease_and_an_execution(store: TaskStore) -> None:
    task = await store.add_task(new_task(T0))
    claim = await claim_one(store, now=T0 + 2)
    assert claim.task.id == task.id
    assert claim.task.status is TaskStatus.RUNNING
    assert claim.task.attempts == 1
    assert claim.task.lease_owner == "w1"
    assert claim.task.lease_expires_at is not None
    assert claim.task.lease_expires_at.timestamp() == T0 + 2 + LEASE
    assert claim.task.started_at is not None
    assert claim.token.worker_id == "w1"
    [execution] = await store.list_executions(task.id)
    assert execution.attempt == 1
    assert execution.worker_id == "w1"
    assert execution.outcome is ExecutionOutcome.RUNNING
    assert await store.claim(worker_id="w2", now=T0 + 2, lease_seconds=LEASE, limit=5) == []


async def test_claim_respects_run_at(store: TaskStore) -> None:
    await store.add_task(new_task(T0 + 60, name="later"))
    assert await store.claim(worker_id="w1", now=T0, lease_seconds=LEASE, limit=1) == []
    claim = await claim_one(store, now=T0 + 60)
    assert claim.task.name == "later"


async def test_claim_respects_task_types_and_closure_owners(store: TaskStore) -> None:
    await store.add_task(new_task(T0, task_type="a", name="a"))
    await store.add_task(new_task(T0, task_type="b", name="b"))
    await store.add_task(new_task(T0, task_type="c", name="mine", owner="w1"))
    await store.add_task(new_task(T0, task_type="a", name="theirs", owner="w2"))
    claims = await store.claim(
        worker_id="w1", now=T0, lease_seconds=LEASE, limit=10, task_types=["a"]
    )
    assert sorted(c.task.name for c in claims) == ["a", "mine"]
    claims = await store.claim(worker_id="w2", now=T0, lease_seconds=LEASE, limit=10)
    assert sorted(c.task.name for c in claims) == ["b", "theirs"]


async def test_two_connections_never_claim_the_same_task(
    store: TaskStore, store_factory: Callable[..., TaskStore]
) -> None:
    for i in range(200):
        await store.add_task(new_task(T0, name=str(i)))
    async with store_factory() as other:
        claimed: dict[str, list[str]] = {"w1": [], "w2": []}

        async def drain(s: TaskStore, worker_id: str) -> None:
            while claims := await s.claim(
                worker_id=worker_id, now=T0, lease_seconds=LEASE, limit=3
            ):
                claimed[worker_id] += [c.task.id for c in claims]

        async with anyio.create_task_group() as tg:
            tg.start_soon(drain, store, "w1")
            tg.start_soon(drain, other, "w2")
    everything = claimed["w1"] + claimed["w2"]
    assert len(everything) == 200
    assert len(set(everything)) == 200


# --- finish ----------------------------------------------------------------------------


async def test_completed_records_result_execution_and_metrics(store: TaskStore) -> None:
    await store.add_task(new_task(T0))
    claim = await claim_one(store, now=T0 + 1)
    record = await store.finish(claim, Completed({"rows": 3}), now=T0 + 4)
    assert record.status is TaskStatus.COMPLETED
    assert record.result == {"rows": 3}
    assert record.progress == 1.0
    assert record.finished_at is not None
    assert record.finished_at.timestamp() == T0 + 4
    assert record.duration_seconds == 3.0
    assert record.lease_owner is None
    [execution] = await store.list_executions(record.id)
    assert execution.outcome is ExecutionOutcome.COMPLETED
    assert execution.finished_at is not None


async def test_failed_with_retry_time_waits_then_runs_again(store: TaskStore) -> None:
    await store.add_task(new_task(T0))
    claim = await claim_one(store)
    failure = Failed("ConnectionError", "refused", ErrorCategory.NETWORK, retry_at=T0 + 10)
    record = await store.finish(claim, failure, now=T0 + 1)
    assert record.status is TaskStatus.RETRYING
    assert record.run_at.timestamp() == T0 + 10
    assert record.error_category is ErrorCategory.NETWORK
    assert record.error_message == "refused"
    assert await store.claim(worker_id="w1", now=T0 + 9, lease_seconds=LEASE, limit=1) == []
    again = await claim_one(store, now=T0 + 10)
    assert again.task.attempts == 2
    [first, second] = await store.list_executions(record.id)
    assert (first.outcome, first.error_category, first.error_type) == (
        ExecutionOutcome.FAILED,
        ErrorCategory.NETWORK,
        "ConnectionError",
    )
    assert second.outcome is ExecutionOutcome.RUNNING


async def test_failed_without_retry_goes_to_dead_letter_and_can_be_requeued(
    store: TaskStore,
) -> None:
    await store.add_task(new_task(T0, task_type="a"))
    await store.add_task(new_task(T0, task_type="b"))
    for claim in await store.claim(worker_id="w1", now=T0, lease_seconds=LEASE, limit=2):
        category = (
            ErrorCategory.VALIDATION if claim.task.task_type == "a" else ErrorCategory.NETWORK
        )
        record = await store.finish(claim, Failed("E", "bad", category), now=T0 + 1)
        assert record.status is TaskStatus.FAILED
        assert record.finished_at is not None
    requeued = await store.requeue_failed(now=T0 + 2, category=ErrorCategory.VALIDATION)
    assert [(t.task_type, t.status, t.attempts) for t in requeued] == [("a", TaskStatus.PENDING, 0)]
    assert requeued[0].finished_at is None
    assert len(await store.list_executions(requeued[0].id)) == 1  # history kept
    rest = await store.requeue_failed(now=T0 + 2)
    assert [t.task_type for t in rest] == ["b"]
    assert await store.requeue_failed(now=T0 + 3) == []


async def test_stale_token_changes_nothing(store: TaskStore) -> None:
    await store.add_task(new_task(T0))
    claim = await claim_one(store)
    await store.finish(claim, Completed("first"), now=T0 + 1)
    with pytest.raises(LeaseLostError):
        await store.finish(claim, Failed("E", "late", ErrorCategory.UNKNOWN), now=T0 + 2)
    record = await store.get_task(claim.task.id)
    assert record is not None
    assert (record.status, record.result) == (TaskStatus.COMPLETED, "first")


async def test_fencing_a_reaped_worker_cannot_overwrite_the_newer_attempt(store: TaskStore) -> None:
    await store.add_task(new_task(T0))
    old = await claim_one(store, "w1", now=T0)
    # w1 stalls past its lease; the reaper re-queues, w2 takes the new attempt.
    result = await reap(store, now=T0 + LEASE + 1, decide=lambda task: T0 + LEASE + 1)
    assert [t.id for t in result.requeued] == [old.task.id]
    new = await claim_one(store, "w2", now=T0 + LEASE + 1)
    assert (new.task.attempts, new.task.lost_attempts) == (1, 1)  # the lost one given back
    with pytest.raises(LeaseLostError):
        await store.finish(old, Completed("stale"), now=T0 + LEASE + 2)
    heartbeat = await store.heartbeat(
        worker=worker("w1"), now=T0 + LEASE + 2, lease_seconds=LEASE, running=[old.token]
    )
    assert heartbeat.lost == {old.task.id}
    record = await store.finish(new, Completed("fresh"), now=T0 + LEASE + 3)
    assert record.result == "fresh"
    outcomes = [e.outcome for e in await store.list_executions(record.id)]
    assert outcomes == [ExecutionOutcome.LOST, ExecutionOutcome.COMPLETED]


async def test_released_and_deferred_give_the_attempt_back(store: TaskStore) -> None:
    await store.add_task(new_task(T0, name="released"))
    await store.add_task(new_task(T0, name="deferred"))
    claims = {
        c.task.name: c
        for c in await store.claim(worker_id="w1", now=T0, lease_seconds=LEASE, limit=2)
    }
    released = await store.finish(claims["released"], Released(), now=T0 + 1)
    assert (released.status, released.attempts) == (TaskStatus.PENDING, 0)
    deferred = await store.finish(
        claims["deferred"], Deferred(retry_at=T0 + 60, reason="breaker open"), now=T0 + 1
    )
    assert (deferred.status, deferred.attempts) == (TaskStatus.RETRYING, 0)
    assert deferred.run_at.timestamp() == T0 + 60
    again = await claim_one(store, now=T0 + 2)
    assert (again.task.name, again.task.attempts) == ("released", 1)
    outcomes = [e.outcome for e in await store.list_executions(again.task.id)]
    assert outcomes == [ExecutionOutcome.INTERRUPTED, ExecutionOutcome.RUNNING]


FINISHES: dict[str, tuple[Any, bool]] = {  # outcome, and whether a cancel is requested
    "completed": (Completed({"rows": [1, 2]}), False),
    "completed, a tuple": (Completed((1, "a")), False),
    "failed, retried": (Failed("E", "boom", ErrorCategory.NETWORK, retry_at=T0 + 90), False),
    "failed, dead": (Failed("E", "boom", ErrorCategory.VALIDATION, traceback="tb"), False),
    "failed, but cancel requested": (Failed("E", "late", ErrorCategory.UNKNOWN), True),
    "cancelled": (Cancelled(), True),
    "released": (Released(), False),
    "deferred": (Deferred(retry_at=T0 + 60, reason="breaker open"), False),
}


@pytest.mark.parametrize("case", list(FINISHES))
async def test_finish_returns_the_stored_row(store: TaskStore, case: str) -> None:
    """A backend may build the record from the claim instead of reading it back: it must
    be the row as stored, whatever changed while the task ran (progress, message, lease,
    cancel flag) and whatever an earlier attempt left (its error)."""
    outcome, cancel = FINISHES[case]
    task = await store.add_task(
        new_task(T0, payload={"p": 1}, metadata={"m": "x"}, timeout_seconds=9.0, max_retries=5)
    )
    first = await claim_one(store)
    await store.finish(
        first, Failed("Old", "first try", ErrorCategory.NETWORK, retry_at=T0), now=T0 + 1
    )
    claim = await claim_one(store, now=T0 + 2)
    await store.save_progress([ProgressSnapshot(task.id, 0.4, "step 2", None, T0 + 3)])
    await store.heartbeat(worker=worker(), now=T0 + 4, lease_seconds=LEASE, running=[claim.token])
    if cancel:
        await store.request_cancel(task.id, now=T0 + 5)
    record = await store.finish(claim, outcome, now=T0 + 6)
    assert record == await store.get_task(task.id)


# --- calls that land together ----------------------------------------------------------


async def together(store: TaskStore, calls: Sequence[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run ``calls`` at once; each one's result or error, in order. SQLite's database
    thread is held until every call has queued its job, so they all land in one group
    commit, the path that combines them; PostgreSQL runs them side by side."""
    results: list[Any] = [None] * len(calls)
    release = threading.Event()

    async def run(i: int, call: Callable[[], Awaitable[Any]]) -> None:
        try:
            results[i] = await call()
        except Exception as exc:
            results[i] = exc

    async with anyio.create_task_group() as tg:
        if isinstance(store, SQLiteTaskStore):
            holding = threading.Event()

            def hold(conn: sqlite3.Connection) -> None:
                holding.set()
                release.wait(10)

            tg.start_soon(store._db().run, hold, Mode.ALONE)
            await run_sync(holding.wait, 10)
        for i, call in enumerate(calls):
            tg.start_soon(run, i, call)
        await anyio.wait_all_tasks_blocked()
        release.set()
    return results


def by_id(records: Sequence[TaskRecord]) -> dict[str, TaskRecord]:
    return {record.id: record for record in records}


async def test_submits_together_take_the_room_left(store: TaskStore) -> None:
    """Each submit is stored, or refused with QueueFullError, as if it came alone; every
    stored record is the row as stored. Exactly the room left: one store's submits are
    written in turn (SQLite's group commit, PostgreSQL's batches); only submits of other
    processes racing on PostgreSQL may overshoot by the tasks they add
    (storage-contract.md, "Queue-size check")."""
    for _ in range(3):
        await store.add_task(new_task(T0))
    # Times that are not whole seconds: SQLite's combined insert passes them through JSON.
    tasks = [new_task(T0 + i / 7, payload={"i": i}, metadata={"m": str(i)}) for i in range(20)]
    results = await together(
        store, [lambda task=task: store.add_task(task, max_queue_size=15) for task in tasks]
    )
    stored = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, Exception)]
    assert (len(stored), len(refused)) == (12, 8)
    assert all(isinstance(r, QueueFullError) for r in refused)
    assert by_id(stored) == by_id(await store.get_tasks([r.id for r in stored]))
    assert (await store.count_tasks())[TaskStatus.PENDING] == 3 + len(stored)


async def test_a_duplicate_among_submits_together_fails_alone(store: TaskStore) -> None:
    first = await store.add_task(new_task(T0))
    tasks = [new_task(T0) for _ in range(3)] + [new_task(T0, id=first.id)]
    results = await together(store, [lambda task=task: store.add_task(task) for task in tasks])
    assert isinstance(results[3], ValueError)
    assert first.id in str(results[3])
    assert by_id(results[:3]) == by_id(await store.get_tasks([task.id for task in tasks[:3]]))


async def test_finishes_together_each_end_their_own_attempt(store: TaskStore) -> None:
    """Completions (which SQLite combines), a failure, a stale token and a second finish
    of one attempt, all at once: each answer is what it would be alone."""
    for i in range(6):
        await store.add_task(new_task(T0, payload={"i": i}, metadata={"m": str(i)}))
    retried = await claim_one(store)  # its second attempt ends below
    await store.finish(retried, Failed("E", "first", ErrorCategory.NETWORK, retry_at=T0), now=T0)
    claims = await store.claim(worker_id="w1", now=T0, lease_seconds=LEASE, limit=6)
    assert claims[0].task.id == retried.task.id
    await store.save_progress(
        [ProgressSnapshot(c.task.id, 0.5, f"step {i}", None, T0 + 1) for i, c in enumerate(claims)]
    )
    done, failing, stale = claims[:4], claims[4], claims[5]

    def complete(i: int) -> Callable[[], Awaitable[Any]]:
        return lambda: store.finish(done[i], Completed({"n": i}), now=T0 + 2 + i)

    results = await together(
        store,
        [
            *(complete(i) for i in range(4)),
            lambda: store.finish(
                failing, Failed("E", "boom", ErrorCategory.VALIDATION), now=T0 + 3
            ),
            lambda: store.finish(
                Claim(stale.task, LeaseToken(stale.task.id, "w1", stale.token.fence - 1)),
                Completed(1),
                now=T0 + 3,
            ),
            complete(0),  # the same attempt again
        ],
    )
    first, again = results[0], results[6]
    if isinstance(first, LeaseLostError):  # concurrently (PostgreSQL), either may win
        first, again = again, first
    assert isinstance(again, LeaseLostError)
    assert isinstance(results[5], LeaseLostError)
    ended = [first, *results[1:5]]
    assert by_id(ended) == by_id(await store.get_tasks([r.id for r in ended]))
    assert [(r.status, r.progress, r.message) for r in ended] == [
        *((TaskStatus.COMPLETED, 1.0, f"step {i}") for i in range(4)),
        (TaskStatus.FAILED, 0.5, "step 4"),
    ]
    assert [r.result for r in ended[:4]] == [{"n": i} for i in range(4)]
    outcomes = [[e.outcome for e in await store.list_executions(r.id)] for r in ended]
    assert outcomes == [
        [ExecutionOutcome.FAILED, ExecutionOutcome.COMPLETED],
        *([ExecutionOutcome.COMPLETED] for _ in range(3)),
        [ExecutionOutcome.FAILED],
    ]
    [running] = await store.list_executions(stale.task.id)
    assert running.outcome is ExecutionOutcome.RUNNING
    still = await store.get_task(stale.task.id)
    assert still is not None
    assert still.status is TaskStatus.RUNNING
    window = await store.run(logic.metrics_window(since=T0))
    counts: dict[str, int] = {}
    for group in window.groups:
        counts[group.outcome] = counts.get(group.outcome, 0) + group.count
    assert counts == {"completed": 4, "failed": 2}
    assert sorted(window.durations) == [2.0, 3.0, 4.0, 5.0]


def _read_sync(store: TaskStore, sql: str) -> list[tuple[Any, ...]]:
    if isinstance(store, SQLiteTaskStore):
        with contextlib.closing(sqlite3.connect(store.path)) as conn:
            return conn.execute(sql).fetchall()
    import psycopg

    schema = getattr(store, "schema")  # noqa: B009 (a PostgresTaskStore)
    with psycopg.connect(POSTGRES_DSN, options=f"-csearch_path={schema}") as conn:
        return [tuple(found) for found in conn.execute(sql).fetchall()]


async def stored(store: TaskStore, sql: str) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` (valid in both dialects) read on a connection of its own: what
    the tables hold, as anyone with a SQL shell sees them."""
    return await run_sync(_read_sync, store, sql)


def attempt(
    task_id: str,
    number: int,
    worker_id: str,
    started: float,
    ended: float | None = None,
    outcome: ExecutionOutcome = ExecutionOutcome.RUNNING,
    category: ErrorCategory | None = None,
    error: tuple[str, str] | None = None,
) -> ExecutionRecord:
    """An ExecutionRecord as list_executions answers it (id 0: compared apart)."""
    return ExecutionRecord(
        id=0,
        task_id=task_id,
        attempt=number,
        worker_id=worker_id,
        started_at=to_datetime(started),
        finished_at=None if ended is None else to_datetime(ended),
        outcome=outcome,
        error_category=category,
        error_type=None if error is None else error[0],
        error_message=None if error is None else error[1],
    )


async def attempts_of(store: TaskStore, task_id: str) -> list[ExecutionRecord]:
    """The task's attempts, each ended one's row id checked (set) and then left out."""
    found = await store.list_executions(task_id)
    for each in found:
        assert (each.id == 0) is (each.outcome is ExecutionOutcome.RUNNING)
    return [replace(each, id=0) for each in found]


async def test_a_claim_writes_no_execution_row_and_the_running_attempt_is_listed(
    store: TaskStore,
) -> None:
    """Issue 22: a claim writes only the task row; the running attempt is listed as it was
    when the claim wrote its row (worker, start, attempt, outcome running), and its row is
    written once, whole, when it ends: by a finish, and by a completion in a batch."""
    task = await store.add_task(new_task(T0))
    other = await store.add_task(new_task(T0))
    first = {
        c.task.id: c
        for c in await store.claim(worker_id="w1", now=T0 + 2, lease_seconds=LEASE, limit=2)
    }
    assert await stored(store, "SELECT count(*) FROM task_executions") == [(0,)]
    assert await attempts_of(store, task.id) == [attempt(task.id, 1, "w1", T0 + 2)]
    await store.heartbeat(
        worker=worker("w1"), now=T0 + 3, lease_seconds=LEASE, running=[first[task.id].token]
    )
    assert await attempts_of(store, task.id) == [attempt(task.id, 1, "w1", T0 + 2)]
    failure = Failed("ConnectionError", "refused", ErrorCategory.NETWORK, retry_at=T0 + 5)
    await store.finish(first[task.id], failure, now=T0 + 4)
    failed = attempt(
        task.id,
        1,
        "w1",
        T0 + 2,
        T0 + 4,
        ExecutionOutcome.FAILED,
        ErrorCategory.NETWORK,
        ("ConnectionError", "refused"),
    )
    assert await attempts_of(store, task.id) == [failed]
    second = await claim_one(store, "w2", now=T0 + 5)
    assert second.task.id == task.id
    assert await attempts_of(store, task.id) == [failed, attempt(task.id, 2, "w2", T0 + 5)]
    await together(
        store,
        [
            lambda: store.finish(second, Completed(2), now=T0 + 7),
            lambda: store.finish(first[other.id], Completed(1), now=T0 + 8),
        ],
    )
    assert await attempts_of(store, task.id) == [
        failed,
        attempt(task.id, 2, "w2", T0 + 5, T0 + 7, ExecutionOutcome.COMPLETED),
    ]
    assert await attempts_of(store, other.id) == [
        attempt(other.id, 1, "w1", T0 + 2, T0 + 8, ExecutionOutcome.COMPLETED)
    ]
    assert await stored(
        store,
        "SELECT attempt, fence, worker_id, started_at, finished_at, outcome"
        f" FROM task_executions WHERE task_id = '{task.id}' ORDER BY fence",
    ) == [(1, 1, "w1", T0 + 2, T0 + 4, "failed"), (2, 2, "w2", T0 + 5, T0 + 7, "completed")]


async def test_a_lost_attempt_keeps_its_worker_and_start(store: TaskStore) -> None:
    """The reap writes a lost attempt's row from its task row: its worker and start as
    the attempt had them, the reap's time as its end, no metrics."""
    task = await store.add_task(new_task(T0))
    await claim_one(store, "w1", now=T0 + 1)
    result = await reap(store, now=T0 + LEASE + 2, decide=lambda t: T0 + LEASE + 3)
    assert [t.id for t in result.requeued] == [task.id]
    [lost] = await attempts_of(store, task.id)
    assert (lost.error_type, lost.error_message) == (
        "WorkerLostError",
        f"worker w1 stopped renewing its lease on task_id:{task.id}",
    )
    assert lost == attempt(
        task.id,
        1,
        "w1",
        T0 + 1,
        T0 + LEASE + 2,
        ExecutionOutcome.LOST,
        ErrorCategory.RESOURCE,
        (lost.error_type, lost.error_message),
    )
    again = await claim_one(store, "w2", now=T0 + LEASE + 3)
    assert await attempts_of(store, task.id) == [lost, attempt(task.id, 1, "w2", T0 + LEASE + 3)]
    await store.finish(again, Completed(None), now=T0 + LEASE + 4)
    window = await store.run(logic.metrics_window(since=T0))
    assert [(g.outcome, g.count) for g in window.groups] == [("completed", 1)]


async def test_metrics_are_read_off_the_attempts_rows(store: TaskStore) -> None:
    """Each finished attempt in the statistics, exactly as its task_metrics row had it: task
    type, attempt, outcome, category, queue wait (start less run time), duration, time;
    finishes alone and together, a retry, a release; a lost attempt is not counted."""
    for name, task_type in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("a4", "a"), ("b", "b")]:
        await store.add_task(new_task(T0, name=name, task_type=task_type))
    claims = {
        c.task.name: c
        for c in await store.claim(worker_id="w1", now=T0 + 1, lease_seconds=LEASE, limit=5)
    }
    failure = Failed("E", "boom", ErrorCategory.NETWORK, retry_at=T0 + 10)
    await store.finish(claims["a4"], failure, now=T0 + 2)
    await store.finish(claims["b"], Released(), now=T0 + 2)
    await together(
        store,
        [
            lambda n=n: store.finish(claims[f"a{n}"], Completed(n), now=T0 + 2 + n)
            for n in (1, 2, 3)
        ],
    )
    retry = await claim_one(store, "w1", now=T0 + 12)  # b first: it waits since T0
    assert retry.task.name == "b"
    await reap(store, now=T0 + 12 + LEASE + 1, decide=lambda t: None)  # b is lost
    retry = await claim_one(store, "w1", now=T0 + 50)
    assert (retry.task.name, retry.task.attempts) == ("a4", 2)
    await store.finish(retry, Completed(4), now=T0 + 51)
    metrics = await stored(
        store,
        "SELECT task_type, attempt, outcome, error_category, queue_wait_seconds,"
        " duration_seconds, recorded_at FROM task_metrics ORDER BY recorded_at, task_type",
    )
    assert metrics == [
        ("a", 1, "failed", "network", 1.0, 1.0, T0 + 2),
        ("b", 1, "interrupted", None, 1.0, 1.0, T0 + 2),
        ("a", 1, "completed", None, 1.0, 2.0, T0 + 3),
        ("a", 1, "completed", None, 1.0, 3.0, T0 + 4),
        ("a", 1, "completed", None, 1.0, 4.0, T0 + 5),
        ("a", 2, "completed", None, 40.0, 1.0, T0 + 51),
    ]
    window = await store.run(logic.metrics_window(since=T0 + 3))
    groups = sorted(
        (g.task_type, g.outcome, g.category, g.retry, g.count, g.duration_total, g.wait_total)
        for g in window.groups
    )
    assert groups == [
        ("a", "completed", None, False, 3, 9.0, 3.0),
        ("a", "completed", None, True, 1, 1.0, 40.0),
    ]
    assert sorted(window.durations) == [1.0, 2.0, 3.0, 4.0]
    assert window.dead_lettered == 1  # b, lost with no retry left


async def test_a_store_without_task_metrics_writes_no_metrics_rows(
    store_factory: Callable[..., TaskStore],
) -> None:
    """task_monitoring.enable_task_metrics off: finishes (alone and together) write their
    task and execution rows but no task_metrics row."""
    async with store_factory(task_metrics=False) as store:
        for _ in range(4):
            await store.add_task(new_task(T0))
        claims = await store.claim(worker_id="w1", now=T0, lease_seconds=LEASE, limit=4)
        await store.finish(claims[0], Failed("E", "no", ErrorCategory.VALIDATION), now=T0 + 1)
        ended = await together(
            store,
            [lambda c=c: store.finish(c, Completed({"ok": True}), now=T0 + 2) for c in claims[1:]],
        )
        assert [r.status for r in ended] == [TaskStatus.COMPLETED] * 3
        executions = await store.list_executions(claims[1].task.id)
        assert [e.outcome for e in executions] == [ExecutionOutcome.COMPLETED]
        window = await store.run(logic.metrics_window(since=T0))
        assert (window.groups, window.durations) == ([], [])
        assert await stored(store, "SELECT count(*) FROM task_metrics") == [(0,)]


# --- heartbeat and cancel --------------------------------------------------------------


async def test_heartbeat_extends_leases_and_registers_the_worker(store: TaskStore) -> None:
    await store.add_task(new_task(T0))
    claim = await claim_one(store)
    result = await store.heartbeat(
        worker=worker(), now=T0 + 20, lease_seconds=LEASE, running=[claim.token]
    )
    assert result.lost == frozenset()
    assert result.cancel_requested == frozenset()
    record = await store.get_task(claim.task.id)
    assert record is not None
    assert record.lease_expires_at is not None
    assert record.lease_expires_at.timestamp() == T0 + 20 + LEASE
    # The extended lease is not reaped at the old expiry.
    assert (await reap(store, now=T0 + LEASE + 1, decide=lambda t: None)).requeued == []
    [registered] = await store.list_workers()
    assert (registered.worker_id, registered.expires_at) == ("w1", T0 + 20 + LEASE)


async def test_cancel_of_waiting_running_and_finished_tasks(store: TaskStore) -> None:
    waiting = await store.add_task(new_task(T0))
    await store.add_task(new_task(T0 + 1))
    cancelled = await store.request_cancel(waiting.id, now=T0 + 1)
    assert cancelled.status is TaskStatus.CANCELLED
    assert cancelled.finished_at is not None
    running = await claim_one(store, now=T0 + 1)
    requested = await store.request_cancel(running.task.id, now=T0 + 2)
    assert (requested.status, requested.cancel_requested) == (TaskStatus.RUNNING, True)
    beat = await store.heartbeat(
        worker=worker(), now=T0 + 3, lease_seconds=LEASE, running=[running.token]
    )
    assert beat.cancel_requested == {running.task.id}
    done = await store.finish(running, Cancelled(), now=T0 + 4)
    assert done.status is TaskStatus.CANCELLED
    for task_id in (waiting.id, running.task.id):
        with pytest.raises(TaskStateError):
            await store.request_cancel(task_id, now=T0 + 5)
    with pytest.raises(TaskNotFoundError):
        await store.request_cancel("nope", now=T0)


async def test_cancel_requests_are_those_of_the_workers_own_current_attempts(
    store: TaskStore,
) -> None:
    for n in range(4):
        await store.add_task(new_task(T0 + n))
    now = T0 + 4
    mine = [await claim_one(store, "w1", now), await claim_one(store, "w1", now)]
    theirs = await claim_one(store, "w2", now)
    quiet = await claim_one(store, "w1", now)
    for claim in (*mine, theirs):
        await store.request_cancel(claim.task.id, now=T0 + 5)
    held = [claim.token for claim in (*mine, quiet)]

    async def requests(running: Sequence[LeaseToken]) -> frozenset[str]:
        return await store.run(logic.cancel_requests(worker_id="w1", running=running))

    assert await requests(held) == {claim.task.id for claim in mine}
    # What the heartbeat reports too, without renewing anything.
    beat = await store.heartbeat(worker=worker(), now=T0 + 6, lease_seconds=LEASE, running=held)
    assert beat.cancel_requested == await requests(held)
    # Only the attempts the caller names, under their current fence.
    stale = LeaseToken(mine[1].token.task_id, "w1", mine[1].token.fence - 1)
    assert await requests([mine[0].token, stale, theirs.token]) == {mine[0].task.id}
    assert await requests([]) == frozenset()
    await store.finish(mine[0], Cancelled(), now=T0 + 7)
    assert await requests(held) == {mine[1].task.id}


async def test_a_cancel_request_wins_over_a_retry(store: TaskStore) -> None:
    await store.add_task(new_task(T0))
    claim = await claim_one(store)
    await store.request_cancel(claim.task.id, now=T0 + 1)
    failure = Failed("E", "boom", ErrorCategory.NETWORK, retry_at=T0 + 5)
    record = await store.finish(claim, failure, now=T0 + 2)
    assert record.status is TaskStatus.CANCELLED


async def test_terminal_tasks_are_never_overwritten(store: TaskStore) -> None:
    await store.add_task(new_task(T0))
    claim = await claim_one(store)
    await store.finish(claim, Completed(1), now=T0 + 1)
    assert await store.cancel_waiting(now=T0 + 2) == []
    assert (await reap(store, now=T0 + 10_000, decide=lambda t: T0)).requeued == []
    assert await store.claim(worker_id="w1", now=T0 + 10_000, lease_seconds=LEASE, limit=1) == []
    record = await store.get_task(claim.task.id)
    assert record is not None
    assert record.status is TaskStatus.COMPLETED


async def test_cancel_waiting_clears_pending_and_retrying(store: TaskStore) -> None:
    for _ in range(3):
        await store.add_task(new_task(T0))
    claim = await claim_one(store)
    await store.finish(claim, Failed("E", "x", ErrorCategory.NETWORK, retry_at=T0 + 9), now=T0)
    await store.add_task(new_task(T0))
    running = await claim_one(store)
    assert len(await store.cancel_waiting(now=T0 + 1)) == 3
    counts = await store.count_tasks()
    assert counts[TaskStatus.CANCELLED] == 3
    assert counts[TaskStatus.RUNNING] == 1
    assert (await store.get_task(running.task.id)) is not None


async def test_pause_state_is_shared(
    store: TaskStore, store_factory: Callable[..., TaskStore]
) -> None:
    assert await store.get_paused() == (False, None)
    await store.set_paused(True, reason="maintenance window")
    async with store_factory() as other:
        assert await other.get_paused() == (True, "maintenance window")
        await other.set_paused(False)
    assert await store.get_paused() == (False, None)


# --- crash recovery -------------------------------------------------------------------


async def test_reap_requeues_or_fails_by_the_decider(store: TaskStore) -> None:
    await store.add_task(new_task(T0, name="retry"))
    await store.add_task(new_task(T0, name="give-up"))
    await store.claim(worker_id="w1", now=T0, lease_seconds=LEASE, limit=2)
    result = await reap(
        store, now=T0 + LEASE + 1, decide=lambda t: T0 + 100 if t.name == "retry" else None
    )
    assert [t.name for t in result.requeued] == ["retry"]
    assert result.requeued[0].status is TaskStatus.RETRYING
    assert result.requeued[0].run_at.timestamp() == T0 + 100
    assert result.requeued[0].error_category is ErrorCategory.RESOURCE
    [failed] = result.failed
    assert (failed.name, failed.status, failed.error_type) == (
        "give-up",
        TaskStatus.FAILED,
        "WorkerLostError",
    )
    assert [(t.attempts, t.lost_attempts) for t in [*result.requeued, failed]] == [(0, 1)] * 2
    executions = await store.list_executions(failed.id)
    assert [(e.outcome, e.error_category) for e in executions] == [
        (ExecutionOutcome.LOST, ErrorCategory.RESOURCE)
    ]


async def test_a_lost_attempt_is_given_back_and_counted_apart(store: TaskStore) -> None:
    task = await store.add_task(new_task(T0, max_retries=5))
    first = await claim_one(store, now=T0)
    await store.finish(
        first, Failed("E", "refused", ErrorCategory.NETWORK, retry_at=T0 + 1), now=T0 + 1
    )
    second = await claim_one(store, now=T0 + 1)
    assert (second.task.attempts, second.task.lost_attempts) == (2, 0)
    asked: list[TaskRecord] = []

    def decide(lost: TaskRecord) -> float:
        asked.append(lost)
        return T0 + 200

    result = await reap(store, now=T0 + 1 + LEASE + 1, decide=decide)
    # The decider sees the task as the loss leaves it.
    assert [(t.attempts, t.lost_attempts) for t in asked] == [(1, 1)]
    [requeued] = result.requeued
    assert requeued == await store.get_task(task.id)
    assert (requeued.status, requeued.attempts, requeued.lost_attempts) == (
        TaskStatus.RETRYING,
        1,  # the failed attempt only: the lost one is not a failure
        1,
    )
    assert requeued.run_at.timestamp() == T0 + 200
    assert (requeued.error_type, requeued.error_category) == (
        "WorkerLostError",
        ErrorCategory.RESOURCE,
    )
    third = await claim_one(store, now=T0 + 200)
    assert (third.task.attempts, third.task.lost_attempts) == (2, 1)
    done = await store.finish(third, Completed("ok"), now=T0 + 201)
    assert (done.attempts, done.lost_attempts) == (2, 1)
    executions = await store.list_executions(task.id)
    assert [(e.attempt, e.outcome, e.error_type) for e in executions] == [
        (1, ExecutionOutcome.FAILED, "E"),
        (2, ExecutionOutcome.LOST, "WorkerLostError"),
        (2, ExecutionOutcome.COMPLETED, None),  # attempt 2 again: the lost one was given back
    ]
    assert executions[1].error_category is ErrorCategory.RESOURCE
    assert executions[1].finished_at is not None
    # Lost attempts are not failed ones: no metrics row says so.
    window = await store.run(logic.metrics_window(since=T0))
    assert sorted((g.outcome, g.count) for g in window.groups) == [
        ("completed", 1),
        ("failed", 1),
    ]


async def lose(store: TaskStore, now: float, **bound: int) -> ReapResult:
    """Claim the one waiting task at ``now`` and lose it: reaped once its lease expired,
    re-queued (when it is) for ``now + 1`` plus the lease."""
    await claim_one(store, now=now)
    return await reap(store, now=now + LEASE + 1, decide=lambda t: now + LEASE + 1, **bound)


async def test_reap_dead_letters_a_task_at_its_bound_of_lost_attempts(store: TaskStore) -> None:
    task = await store.add_task(new_task(T0))
    now = T0
    for lost in range(1, MAX_LOST):
        result = await lose(store, now)
        assert [(t.status, t.lost_attempts) for t in result.requeued] == [
            (TaskStatus.RETRYING, lost)
        ]
        now += LEASE + 1
    result = await lose(store, now, max_lost_attempts=MAX_LOST)
    assert result.requeued == []
    [dead] = result.failed
    assert dead == await store.get_task(task.id)
    assert (dead.status, dead.attempts, dead.lost_attempts) == (TaskStatus.FAILED, 0, MAX_LOST)
    assert (dead.error_type, dead.error_category) == ("WorkerLostError", ErrorCategory.RESOURCE)
    assert dead.error_message is not None
    assert f"lost with its worker {MAX_LOST} times (max_lost_attempts {MAX_LOST})" in (
        dead.error_message
    )
    assert dead.finished_at is not None
    executions = await store.list_executions(task.id)
    assert [(e.outcome, e.error_category) for e in executions] == [
        (ExecutionOutcome.LOST, ErrorCategory.RESOURCE)
    ] * MAX_LOST
    # A requeue from the dead letter queue gives it a new budget of both kinds.
    [requeued] = await store.requeue_failed(now=now + 100, task_ids=[task.id])
    assert (requeued.status, requeued.attempts, requeued.lost_attempts) == (
        TaskStatus.PENDING,
        0,
        0,
    )


async def test_a_tasks_own_bound_on_lost_attempts_overrides_the_reapers(
    store: TaskStore,
) -> None:
    once = await store.add_task(new_task(T0, name="once", max_lost_attempts=1))
    assert once.max_lost_attempts == 1
    await store.add_task(new_task(T0, name="more", max_lost_attempts=MAX_LOST + 1))
    await store.claim(worker_id="w1", now=T0, lease_seconds=LEASE, limit=2)
    result = await reap(store, now=T0 + LEASE + 1, decide=lambda t: T0 + LEASE + 1)
    assert [(t.name, t.lost_attempts) for t in result.failed] == [("once", 1)]
    now = T0 + LEASE + 1
    for _ in range(MAX_LOST - 1):  # past the reaper's bound, within its own
        assert [t.name for t in (await lose(store, now)).requeued] == ["more"]
        now += LEASE + 1
    [dead] = (await lose(store, now)).failed
    assert (dead.name, dead.lost_attempts, dead.max_lost_attempts) == (
        "more",
        MAX_LOST + 1,
        MAX_LOST + 1,
    )


async def test_reap_of_an_expired_worker_does_not_wait_for_leases(store: TaskStore) -> None:
    await store.heartbeat(worker=worker("dead"), now=T0, lease_seconds=LEASE)
    await store.add_task(new_task(T0))
    await claim_one(store, "dead")
    result = await reap(store, now=T0 + 1, decide=lambda t: T0 + 1, expired=["dead"])
    assert len(result.requeued) == 1
    assert result.expired_workers == ["dead"]
    assert await store.list_workers() == []


async def test_closures_of_a_dead_process_fail_with_handler_unavailable(store: TaskStore) -> None:
    await store.heartbeat(worker=worker("gone"), now=T0, lease_seconds=LEASE)
    await store.heartbeat(worker=worker("alive"), now=T0, lease_seconds=LEASE * 10)
    running = await store.add_task(new_task(T0, owner="gone", name="running"))
    waiting = await store.add_task(new_task(T0 + 1, owner="gone", name="waiting"))
    kept = await store.add_task(new_task(T0, owner="alive", name="kept"))
    await claim_one(store, "gone")
    result = await reap(store, now=T0 + LEASE + 1, decide=lambda t: T0)
    assert sorted(t.name for t in result.failed) == ["running", "waiting"]
    for task_id in (running.id, waiting.id):
        record = await store.get_task(task_id)
        assert record is not None
        assert (record.status, record.error_type) == (TaskStatus.FAILED, "HandlerUnavailableError")
    record = await store.get_task(kept.id)
    assert record is not None
    assert record.status is TaskStatus.PENDING


# --- statistics and system metrics --------------------------------------------------------


async def test_counts_by_type_follow_every_change(store: TaskStore) -> None:
    for task_type in ("a", "a", "b"):
        await store.add_task(new_task(T0, task_type=task_type))
    claims = await store.claim(
        worker_id="w1", now=T0, lease_seconds=LEASE, limit=3, task_types=["b"]
    )
    await store.finish(claims[0], Completed(), now=T0 + 1)
    counts = await store.run(logic.count_tasks_by_type())
    assert set(counts) == {"a", "b"}
    assert counts["a"][TaskStatus.PENDING] == 2
    assert counts["b"][TaskStatus.COMPLETED] == 1
    assert set(counts["b"]) == set(TaskStatus)
    assert sum(counts["b"].values()) == 1
    await cleanup(store, before=T0 + 2)
    assert set(await store.run(logic.count_tasks_by_type())) == {"a"}  # no tasks of b left


async def test_metrics_window_groups_attempts_since_a_time(store: TaskStore) -> None:
    for _ in range(3):
        await store.add_task(new_task(T0, task_type="a", max_retries=0))
    first, second, third = await store.claim(
        worker_id="w1", now=T0 + 1, lease_seconds=LEASE, limit=3
    )
    await store.finish(first, Completed(), now=T0 + 3)  # waited 1 s, ran 2 s
    await store.finish(second, Completed(), now=T0 + 5)  # ran 4 s
    await store.finish(third, Failed("E", "x", ErrorCategory.VALIDATION), now=T0 + 6)
    window = await store.run(logic.metrics_window(since=T0))
    groups = {(g.outcome, g.category, g.retry): g for g in window.groups}
    completed = groups["completed", None, False]
    assert (completed.task_type, completed.count) == ("a", 2)
    assert (completed.duration_total, completed.wait_total) == (6.0, 2.0)
    assert groups["failed", "validation", False].count == 1
    assert sorted(window.durations) == [2.0, 4.0]
    assert window.dead_lettered == 1
    later = await store.run(logic.metrics_window(since=T0 + 4, sample_limit=1))
    assert sum(g.count for g in later.groups) == 2
    assert later.durations == [4.0]


async def test_resource_samples_are_stored_listed_and_cleaned_up(store: TaskStore) -> None:
    await store.run(logic.ping())
    for i in range(5):
        await store.run(
            logic.add_resource_sample(
                ResourceSample(
                    recorded_at=T0 + i,
                    cpu_percent=10.0 + i,
                    memory_percent=50.0,
                    disk_percent=20.0,
                    process_rss_mb=64.0,
                    process_cpu_percent=1.5,
                    active_tasks=i,
                    queued_tasks=2 * i,
                )
            )
        )
    samples = await store.run(logic.resource_samples(since=T0 + 1, limit=3))
    assert [s.recorded_at for s in samples] == [T0 + 2, T0 + 3, T0 + 4]  # newest 3, in order
    assert (samples[0].cpu_percent, samples[0].active_tasks, samples[0].queued_tasks) == (
        12.0,
        2,
        4,
    )
    assert samples[0].process_cpu_percent == 1.5
    await cleanup(store, before=T0 + 3)
    assert [s.recorded_at for s in await store.run(logic.resource_samples())] == [T0 + 3, T0 + 4]


# --- progress and housekeeping ----------------------------------------------------------


async def test_progress_is_saved_for_running_tasks_with_bounded_history(
    store_factory: Callable[..., TaskStore],
) -> None:
    async with store_factory(history_limit=5) as store:
        await store.add_task(new_task(T0))
        idle = await store.add_task(new_task(T0 + 1))
        claim = await claim_one(store)
        snapshots = [
            ProgressSnapshot(claim.task.id, i / 10, f"step {i}", {"i": i}, T0 + i)
            for i in range(10)
        ]
        await store.save_progress(snapshots)
        await store.save_progress([ProgressSnapshot(idle.id, 0.5, "not running", None, T0)])
        record = await store.get_task(claim.task.id)
        assert record is not None
        assert (record.progress, record.message) == (0.9, "step 9")
        history = await store.progress_history(claim.task.id)
        assert [s.message for s in history] == [f"step {i}" for i in range(5, 10)]
        assert history[-1].metadata == {"i": 9}
        untouched = await store.get_task(idle.id)
        assert untouched is not None
        assert untouched.progress == 0.0


async def test_progress_history_is_trimmed_per_task_across_saves(
    store_factory: Callable[..., TaskStore],
) -> None:
    """Each task keeps its own newest ``history_limit`` rows, whatever the other tasks of
    the same save hold (the trim finds one cutoff a task)."""
    async with store_factory(history_limit=3) as store:
        for _ in range(3):
            await store.add_task(new_task(T0))
        long, short, quiet = [await claim_one(store) for _ in range(3)]
        await store.save_progress([ProgressSnapshot(quiet.task.id, 0.1, "once", None, T0)])
        for i in range(5):
            batch = [ProgressSnapshot(long.task.id, i / 10, f"long {i}", None, T0 + i)]
            if i < 2:
                batch.append(ProgressSnapshot(short.task.id, i / 10, f"short {i}", None, T0 + i))
            await store.save_progress(batch)
        histories = {
            claim.task.id: [s.message for s in await store.progress_history(claim.task.id)]
            for claim in (long, short, quiet)
        }
        assert histories == {
            long.task.id: ["long 2", "long 3", "long 4"],
            short.task.id: ["short 0", "short 1"],
            quiet.task.id: ["once"],
        }


async def test_cleanup_deletes_old_finished_tasks_with_their_rows(store: TaskStore) -> None:
    for i in range(3):
        await store.add_task(new_task(T0, name=f"old{i}"))
    await store.add_task(new_task(T0, name="fresh"))
    claims = await store.claim(worker_id="w1", now=T0, lease_seconds=LEASE, limit=4)
    by_name = {c.task.name: c for c in claims}
    await store.save_progress([ProgressSnapshot(by_name["old0"].task.id, 0.5, "x", None, T0)])
    await store.finish(by_name["old0"], Completed(), now=T0 + 1)
    await store.finish(by_name["old1"], Failed("E", "x", ErrorCategory.UNKNOWN), now=T0 + 1)
    await store.finish(by_name["fresh"], Completed(), now=T0 + 100)
    still_running = by_name["old2"]
    deleted = await cleanup(store, before=T0 + 50)
    assert deleted == 2
    assert await store.get_task(by_name["old0"].task.id) is None
    assert await store.list_executions(by_name["old0"].task.id) == []
    assert await store.progress_history(by_name["old0"].task.id) == []
    assert await store.get_task(by_name["fresh"].task.id) is not None
    assert await store.get_task(still_running.task.id) is not None


async def test_maintenance_and_backup(store: TaskStore, tmp_path: Path) -> None:
    for _ in range(5):
        await store.add_task(new_task(T0))
    report = await store.maintenance(vacuum=True)
    assert report["integrity"] == "ok"
    assert report["vacuumed"] is True
    target = tmp_path / "backups" / "copy.db"
    backup = await store.backup(str(target))
    assert backup["tasks"] == 5
    assert target.stat().st_size == backup["bytes"]
    with sqlite3.connect(target) as copy:
        assert copy.execute("SELECT count(*) FROM background_tasks").fetchone() == (5,)


async def test_reopening_keeps_data_and_schema(store_factory: Callable[..., TaskStore]) -> None:
    async with store_factory() as first:
        version = first.schema_version
        task = await first.add_task(new_task(T0))
    assert version >= 1
    async with store_factory() as second:
        assert second.schema_version == version
        assert await second.get_task(task.id) == task


#: The first core migration of each dialect with lost attempts counted apart.
LOST_ATTEMPTS_MIGRATION = {"sqlite": 6, "postgres": 3}

#: Rows as the schema before it held them: a task retrying after a failed attempt, and a
#: task running under a worker's lease (one statement each: valid SQL in both dialects).
ROWS_BEFORE_LOST_ATTEMPTS = f"""
INSERT INTO background_tasks (id, name, task_type, priority, status, payload, metadata,
    max_retries, attempts, fence, run_at, created_at, updated_at, error_type, error_category)
VALUES ('old-retrying', 'retrying', 'work', 1, 'retrying', '{{}}', '{{"k": 1}}', 3, 1, 1,
    {T0 + 5}, {T0}, {T0 + 1}, 'ConnectionError', 'network');
INSERT INTO background_tasks (id, name, task_type, priority, status, payload, metadata,
    max_retries, attempts, fence, run_at, created_at, updated_at, lease_owner,
    lease_expires_at, started_at)
VALUES ('old-running', 'running', 'work', 2, 'running', '{{"n": 7}}', '{{}}', 3, 1, 1,
    {T0}, {T0}, {T0}, 'w-old', {T0 + LEASE}, {T0});
INSERT INTO task_executions (task_id, attempt, fence, worker_id, started_at, outcome)
VALUES ('old-running', 1, 1, 'w-old', {T0}, 'running');
"""


@operation(OpMode.WRITE)
def run_script(sql: str) -> Op[None]:
    yield script(sql)


async def test_a_database_of_the_previous_schema_upgrades_in_place(
    store_factory: Callable[..., TaskStore], backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first_new = LOST_ATTEMPTS_MIGRATION[backend]
    shipped = Component.migrations

    def before_lost_attempts(self: Component, dialect: str) -> list[Migration]:
        found = shipped(self, dialect)
        return [m for m in found if self.name != "core" or m.version < first_new]

    monkeypatch.setattr(Component, "migrations", before_lost_attempts)
    async with store_factory() as old:
        assert old.schema_version < first_new
        await old.run(run_script(ROWS_BEFORE_LOST_ATTEMPTS))
    monkeypatch.undo()

    async with store_factory() as upgraded:
        assert upgraded.schema_version >= first_new
        retrying, running = await upgraded.get_tasks(["old-retrying", "old-running"])
        assert (retrying.status, retrying.attempts, retrying.lost_attempts) == (
            TaskStatus.RETRYING,
            1,
            0,
        )
        assert (retrying.metadata, retrying.error_category) == ({"k": 1}, ErrorCategory.NETWORK)
        assert retrying.max_lost_attempts is None
        assert (running.status, running.payload, running.lease_owner) == (
            TaskStatus.RUNNING,
            {"n": 7},
            "w-old",
        )
        # The old worker's attempt is reaped under the new accounting.
        result = await reap(upgraded, now=T0 + LEASE + 1, decide=lambda t: T0 + LEASE + 1)
        [lost] = result.requeued
        assert (lost.id, lost.attempts, lost.lost_attempts) == ("old-running", 0, 1)
        assert [e.outcome for e in await upgraded.list_executions("old-running")] == [
            ExecutionOutcome.LOST
        ]
        # Both run on; new tasks take their own bound.
        claims = await upgraded.claim(
            worker_id="w1", now=T0 + LEASE + 1, lease_seconds=LEASE, limit=3
        )
        assert sorted((c.task.id, c.task.attempts) for c in claims) == [
            ("old-retrying", 2),
            ("old-running", 1),
        ]
        added = await upgraded.add_task(new_task(T0, max_lost_attempts=2))
        assert await upgraded.get_task(added.id) == added
        assert added.max_lost_attempts == 2


#: The first core migration of each dialect whose claims write no execution row.
ROWS_AT_THE_END_MIGRATION = {"sqlite": 13, "postgres": 10}

#: Rows as the schema before it held them: a task in its second attempt (the first failed,
#: with its execution and metrics rows; the second's execution row written by its claim),
#: and a task running under a dead worker's lease.
ROWS_BEFORE_ROWS_AT_THE_END = f"""
INSERT INTO background_tasks (id, name, task_type, priority, status, payload, metadata,
    max_retries, attempts, fence, run_at, dispatch_at, created_at, updated_at, lease_owner,
    lease_expires_at, started_at, error_type, error_category, error_message)
VALUES ('in-flight', 'in flight', 'work', 1, 'running', '{{}}', '{{}}', 3, 2, 2,
    {T0 + 4}, {T0 + 4}, {T0}, {T0 + 6}, 'w-old', {T0 + 1000}, {T0 + 6}, 'E', 'network',
    'boom');
INSERT INTO background_tasks (id, name, task_type, priority, status, payload, metadata,
    max_retries, attempts, fence, run_at, dispatch_at, created_at, updated_at, lease_owner,
    lease_expires_at, started_at)
VALUES ('abandoned', 'abandoned', 'other', 1, 'running', '{{}}', '{{}}', 0, 1, 1,
    {T0}, {T0}, {T0}, {T0 + 1}, 'w-dead', {T0 + LEASE}, {T0 + 1});
INSERT INTO task_executions (task_id, attempt, fence, worker_id, started_at, finished_at,
    outcome, error_category, error_type, error_message)
VALUES ('in-flight', 1, 1, 'w-old', {T0 + 1}, {T0 + 3}, 'failed', 'network', 'E', 'boom');
INSERT INTO task_metrics (task_id, task_type, attempt, outcome, error_category,
    queue_wait_seconds, duration_seconds, recorded_at)
VALUES ('in-flight', 'work', 1, 'failed', 'network', 1.0, 2.0, {T0 + 3});
INSERT INTO task_executions (task_id, attempt, fence, worker_id, started_at, outcome)
VALUES ('in-flight', 2, 2, 'w-old', {T0 + 6}, 'running');
INSERT INTO task_executions (task_id, attempt, fence, worker_id, started_at, outcome)
VALUES ('abandoned', 1, 1, 'w-dead', {T0 + 1}, 'running');
"""


async def test_attempts_running_across_the_upgrade_to_rows_written_at_the_end(
    store_factory: Callable[..., TaskStore], backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database whose claims wrote execution rows, with attempts running: after the
    upgrade they are listed as before, finish and are reaped as attempts claimed after it,
    and the metrics rows written before it still count."""
    first_new = ROWS_AT_THE_END_MIGRATION[backend]
    shipped = Component.migrations

    def before_rows_at_the_end(self: Component, dialect: str) -> list[Migration]:
        found = shipped(self, dialect)
        return [m for m in found if self.name != "core" or m.version < first_new]

    monkeypatch.setattr(Component, "migrations", before_rows_at_the_end)
    async with store_factory() as old:
        assert old.schema_version == first_new - 1
        await old.run(run_script(ROWS_BEFORE_ROWS_AT_THE_END))
    monkeypatch.undo()

    failed = attempt(
        "in-flight",
        1,
        "w-old",
        T0 + 1,
        T0 + 3,
        ExecutionOutcome.FAILED,
        ErrorCategory.NETWORK,
        ("E", "boom"),
    )
    async with store_factory() as upgraded:
        assert upgraded.schema_version >= first_new
        # Listed as the old schema's rows were, but the running attempts' row ids (their
        # rows are written when they end).
        assert await attempts_of(upgraded, "in-flight") == [
            failed,
            attempt("in-flight", 2, "w-old", T0 + 6),
        ]
        assert await attempts_of(upgraded, "abandoned") == [
            attempt("abandoned", 1, "w-dead", T0 + 1)
        ]
        # The old worker finishes its attempt; the dead one's is reaped.
        [in_flight] = await upgraded.get_tasks(["in-flight"])
        claimed = Claim(in_flight, LeaseToken("in-flight", "w-old", 2))
        done = await upgraded.finish(claimed, Completed({"ok": 1}), now=T0 + 9)
        assert (done.status, done.attempts) == (TaskStatus.COMPLETED, 2)
        assert await attempts_of(upgraded, "in-flight") == [
            failed,
            attempt("in-flight", 2, "w-old", T0 + 6, T0 + 9, ExecutionOutcome.COMPLETED),
        ]
        result = await reap(upgraded, now=T0 + LEASE + 1, decide=lambda t: None)
        assert [t.id for t in result.failed] == ["abandoned"]
        [lost] = await attempts_of(upgraded, "abandoned")
        assert (lost.worker_id, lost.started_at, lost.finished_at, lost.outcome) == (
            "w-dead",
            to_datetime(T0 + 1),
            to_datetime(T0 + LEASE + 1),
            ExecutionOutcome.LOST,
        )
        # The metrics row of before and the one written now, read together.
        assert await stored(
            upgraded,
            "SELECT task_id, task_type, attempt, outcome, error_category,"
            " queue_wait_seconds, duration_seconds, recorded_at FROM task_metrics"
            " ORDER BY recorded_at",
        ) == [
            ("in-flight", "work", 1, "failed", "network", 1.0, 2.0, T0 + 3),
            ("in-flight", "work", 2, "completed", None, 2.0, 3.0, T0 + 9),
        ]
        window = await upgraded.run(logic.metrics_window(since=T0))
        assert sorted(
            (g.outcome, g.retry, g.count, g.duration_total, g.wait_total) for g in window.groups
        ) == [("completed", True, 1, 3.0, 2.0), ("failed", False, 1, 2.0, 1.0)]
        assert window.durations == [3.0]
        # Retention deletes the old metrics rows with their task.
        assert await cleanup(upgraded, before=T0 + LEASE + 2) == 2
        assert await stored(upgraded, "SELECT count(*) FROM task_metrics") == [(0,)]
        assert await stored(upgraded, "SELECT count(*) FROM task_executions") == [(0,)]


# --- shared circuit breakers --------------------------------------------------------


async def test_breaker_states_are_shared_and_the_latest_change_wins(
    store: TaskStore, store_factory: Callable[..., TaskStore]
) -> None:
    assert await store.load_breaker_states() == []
    opened = SharedBreakerState("llm", "open", T0, T0 + 60, T0 + 1, "w1")
    await store.save_breaker_state(opened)
    older = SharedBreakerState("llm", "closed", None, None, T0, "w2")
    await store.save_breaker_state(older)  # recorded earlier than the opening: ignored
    async with store_factory() as other:
        assert await other.load_breaker_states() == [opened]
        closed = SharedBreakerState("llm", "closed", None, None, T0 + 70, "w2")
        await other.save_breaker_state(closed)
    assert await store.load_breaker_states() == [closed]


async def test_the_write_check_writes_and_reports(
    store: TaskStore, store_factory: Callable[..., TaskStore]
) -> None:
    """A fresh store is writable; the write check is a real write (one queue_state row,
    however often it runs) that leaves the pause and the tasks alone, and is seen by
    another store on the database."""
    assert store.write_status.writable
    assert store.write_status.checked_at is None
    await store.set_paused(True, reason="maintenance window")
    for now in (10.0, 20.0):
        status = await store.check_writes(now=now)
        assert status.writable
        assert status.checked_at is not None
        assert status.error is None
    assert await store.get_paused() == (True, "maintenance window")
    assert await store.count_tasks() == dict.fromkeys(TaskStatus, 0)
    async with store_factory() as other:
        assert (await other.check_writes(now=30.0)).writable


# --- schedules ----------------------------------------------------------------------------


def every(seconds: float, **fields: Any) -> ScheduleDefinition:
    return ScheduleDefinition(**{"task_type": "work", "every": seconds, **fields})


def tick_task(schedule: ScheduleRecord, tick_at: float) -> NewTask:
    definition = schedule.definition
    return new_task(tick_at, task_type=definition.task_type, payload=dict(definition.payload))


async def fire(
    store: TaskStore,
    now: float,
    *,
    worker_id: str = "w1",
    grace: float = 10.0,
    missed: Missed = "latest",
    limit: int | None = None,
) -> list[ScheduleFiring]:
    return await store.run(
        logic.fire_schedules(
            now=now,
            grace=grace,
            missed=missed,
            worker_id=worker_id,
            make_task=tick_task,
            limit=limit,
        )
    )


async def scheduled_tasks(store: TaskStore) -> list[TaskRecord]:
    found = await store.list_tasks(limit=1000)
    return sorted(found, key=lambda t: t.run_at)


async def test_a_schedule_is_added_listed_and_read(store: TaskStore) -> None:
    added = await store.run(
        logic.add_schedule(
            "nightly",
            ScheduleDefinition(task_type="work", cron="0 3 * * *", payload={"n": 1}),
            now=T0,
        )
    )
    assert added.origin == "api"
    assert added.definition.cron == "0 3 * * *"
    assert added.definition.payload == {"n": 1}
    # 03:00 UTC after T0 (2027-01-15 08:00 UTC)
    assert added.next_run_at == T0 + 19 * 3600
    await store.run(logic.add_schedule("often", every(5), now=T0))
    assert [s.name for s in await store.run(logic.list_schedules())] == ["nightly", "often"]
    assert (
        await store.run(logic.get_schedule("often")) == (await store.run(logic.list_schedules()))[1]
    )
    assert await store.run(logic.get_schedule("nope")) is None
    assert await store.run(logic.next_schedule_at()) == T0 + 5


async def test_adding_a_taken_schedule_name_stores_nothing(store: TaskStore) -> None:
    await store.run(logic.add_schedule("often", every(5), now=T0))
    with pytest.raises(DuplicateScheduleError) as raised:
        await store.run(logic.add_schedule("often", every(60, task_type="other"), now=T0))
    assert raised.value.field == "name"
    [kept] = await store.run(logic.list_schedules())
    assert kept.definition.every == 5


async def test_a_due_tick_fires_once_with_its_task(store: TaskStore) -> None:
    await store.run(logic.add_schedule("often", every(5, payload={"k": "v"}), now=T0))
    assert await fire(store, T0 + 4) == []
    [firing] = await fire(store, T0 + 5.5)
    [task] = firing.tasks
    assert firing.schedule == "often"
    assert (task.run_at, task.payload) == (T0 + 5, {"k": "v"})
    assert firing.next_run_at == T0 + 10
    assert firing.missed_since is None
    stored = await store.get_task(task.id)
    assert stored is not None
    assert stored.status is TaskStatus.PENDING
    [tick] = await store.run(logic.schedule_ticks("often"))
    assert (tick.tick_at, tick.task_id, tick.worker_id) == (T0 + 5, task.id, "w1")
    schedule = await store.run(logic.get_schedule("often"))
    assert schedule is not None
    assert (schedule.last_tick_at, schedule.last_task_id) == (T0 + 5, task.id)
    assert await fire(store, T0 + 6) == []  # fired already


async def test_a_tick_fired_by_two_processes_at_once_yields_one_task(
    store: TaskStore, store_factory: Callable[..., TaskStore]
) -> None:
    await store.run(logic.add_schedule("often", every(1), now=T0))
    async with store_factory() as other:
        for second in range(1, 21):
            results: list[list[ScheduleFiring]] = []

            async def fire_from(
                each: TaskStore, worker_id: str, now: float, results: list[Any] = results
            ) -> None:
                results.append(await fire(each, now, worker_id=worker_id))

            async with anyio.create_task_group() as tg:
                tg.start_soon(fire_from, store, "w1", T0 + second + 0.1)
                tg.start_soon(fire_from, other, "w2", T0 + second + 0.2)
            assert sum(len(f.tasks) for firings in results for f in firings) == 1
    ticks = await store.run(logic.schedule_ticks("often"))
    assert [t.tick_at for t in ticks] == [T0 + s for s in range(1, 21)]
    tasks = await scheduled_tasks(store)
    assert sorted(t.id for t in tasks) == sorted(str(t.task_id) for t in ticks)


async def test_a_tick_row_already_there_is_not_fired_again(store: TaskStore) -> None:
    # A second process that read the schedule before the first fired it: the tick's key
    # (schedule, tick) is taken, so no second task.
    await store.run(logic.add_schedule("often", every(5), now=T0))
    await fire(store, T0 + 5)
    await store.run(run_script(f"UPDATE schedules SET next_run_at = {T0 + 5}"))
    [again] = await fire(store, T0 + 6, worker_id="w2")
    assert again.tasks == ()
    assert again.ticks == ()
    assert len(await scheduled_tasks(store)) == 1
    assert again.next_run_at == T0 + 10


async def test_a_paused_schedule_does_not_fire_and_resumes_from_its_next_tick(
    store: TaskStore,
) -> None:
    await store.run(logic.add_schedule("often", every(5), now=T0))
    paused = await store.run(logic.set_schedule_enabled("often", False, now=T0 + 1))
    assert paused.enabled is False
    assert await fire(store, T0 + 30) == []
    assert await store.run(logic.next_schedule_at()) is None
    resumed = await store.run(logic.set_schedule_enabled("often", True, now=T0 + 31))
    assert resumed.enabled is True
    assert resumed.next_run_at == T0 + 35  # the ticks slept through are not missed
    [firing] = await fire(store, T0 + 35)
    assert [t.tick_at for t in firing.ticks] == [T0 + 35]
    with pytest.raises(ScheduleNotFoundError):
        await store.run(logic.set_schedule_enabled("nope", False, now=T0))


async def test_late_ticks_within_the_grace_all_fire(store: TaskStore) -> None:
    await store.run(logic.add_schedule("often", every(1), now=T0))
    [firing] = await fire(store, T0 + 4.5, grace=10)
    assert [t.tick_at for t in firing.ticks] == [T0 + 1, T0 + 2, T0 + 3, T0 + 4]
    assert firing.missed_since is None


@pytest.mark.parametrize("policy", ["latest", "skip"])
async def test_missed_ticks_follow_the_policy(store: TaskStore, policy: Missed) -> None:
    await store.run(logic.add_schedule("hourly", every(3600), now=T0))
    # Every process was down for a day.
    [firing] = await fire(store, T0 + 24 * 3600 + 100, grace=10, missed=policy)
    assert firing.missed_since == T0 + 3600
    assert firing.next_run_at == T0 + 25 * 3600
    fired = [t.tick_at for t in firing.ticks]
    assert fired == ([T0 + 24 * 3600] if policy == "latest" else [])
    assert len(await scheduled_tasks(store)) == len(fired)


async def test_a_schedules_own_missed_policy_overrides_the_default(store: TaskStore) -> None:
    await store.run(logic.add_schedule("hourly", every(3600, missed="skip"), now=T0))
    [firing] = await fire(store, T0 + 5 * 3600 + 100, missed="latest")
    assert firing.ticks == ()


async def test_a_full_queue_leaves_the_tick_fired_without_a_task(store: TaskStore) -> None:
    await store.add_task(new_task(T0))
    await store.run(logic.add_schedule("often", every(5), now=T0))
    [firing] = await fire(store, T0 + 5, limit=1)
    assert firing.tasks == ()
    [tick] = firing.ticks
    assert tick.task_id is None
    assert [t.task_id for t in await store.run(logic.schedule_ticks("often"))] == [None]
    assert firing.next_run_at == T0 + 10
    assert len(await scheduled_tasks(store)) == 1


async def test_delete_removes_a_schedule_and_its_ticks(store: TaskStore) -> None:
    await store.run(logic.add_schedule("often", every(5), now=T0))
    await fire(store, T0 + 5)
    await store.run(logic.delete_schedule("often"))
    assert await store.run(logic.list_schedules()) == []
    assert await store.run(logic.schedule_ticks("often")) == []
    assert len(await scheduled_tasks(store)) == 1  # the task it submitted stays
    with pytest.raises(ScheduleNotFoundError):
        await store.run(logic.delete_schedule("often"))


async def test_defined_schedules_keep_their_runtime_state_until_they_change(
    store: TaskStore,
) -> None:
    definition = ScheduleDefinition(task_type="work", cron="*/5 * * * *")
    written = await store.run(logic.define_schedules([("five", definition, "code")], now=T0 + 60))
    assert written == ["five"]
    await store.run(logic.set_schedule_enabled("five", False, now=T0 + 61))
    # A restart with the same definition: nothing to write (a manager reads first), and
    # written anyway, nothing changes: still paused.
    stored = await store.run(logic.schedule_fingerprints())
    assert stored == {"five": definition.fingerprint()}
    assert logic.changed_definitions([("five", definition, "code")], stored) == []
    again = await store.run(logic.define_schedules([("five", definition, "code")], now=T0 + 120))
    assert again == []
    kept = await store.run(logic.get_schedule("five"))
    assert kept is not None
    assert kept.enabled is False
    # A changed definition replaces it, enabled as defined.
    changed = ScheduleDefinition(task_type="work", cron="*/10 * * * *")
    fresh = ScheduleDefinition(task_type="work", every=60)
    assert logic.changed_definitions(
        [("five", changed, "config"), ("new", fresh, "code")], stored
    ) == [("five", changed, "config"), ("new", fresh, "code")]
    await store.run(logic.define_schedules([("five", changed, "config")], now=T0 + 180))
    replaced = await store.run(logic.get_schedule("five"))
    assert replaced is not None
    assert (replaced.definition.cron, replaced.enabled, replaced.origin) == (
        "*/10 * * * *",
        True,
        "config",
    )
    assert replaced.next_run_at == T0 + 600  # T0 is a whole hour


async def test_cleanup_forgets_old_ticks(store: TaskStore) -> None:
    await store.run(logic.add_schedule("often", every(5), now=T0))
    await fire(store, T0 + 5)
    await fire(store, T0 + 10)
    await store.run(logic.delete_ticks(before=T0 + 7))
    assert [t.tick_at for t in await store.run(logic.schedule_ticks("often"))] == [T0 + 10]


async def test_a_migration_numbered_below_the_newest_is_applied_later(
    store_factory: Callable[..., TaskStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Work merged in any order: a migration whose number is below the newest applied
    one (numbers are reserved per branch, so gaps fill in later) is still applied."""
    async with store_factory() as first:
        newest = first.schema_version
    shipped = Component.migrations
    used = {m.version for m in CORE.migrations(first.dialect)}
    gap = min(set(range(1, newest)) - used)

    def with_a_late_one(self: Component, dialect: str) -> list[Migration]:
        found = shipped(self, dialect)
        if self.name != "core":
            return found
        late = Migration("core", gap, f"{gap:04d}_late.sql", "CREATE TABLE late (x INTEGER);")
        return sorted([*found, late], key=lambda m: m.version)

    monkeypatch.setattr(Component, "migrations", with_a_late_one)
    async with store_factory() as second:
        assert second.schema_version == newest
        await second.run(run_script("INSERT INTO late (x) VALUES (1)"))


# --- dependencies, named queues, aging -------------------------------------------------------


async def claim_all(store: TaskStore, now: float, *, queue: str = "default") -> list[Claim]:
    return await store.claim(worker_id="w1", now=now, lease_seconds=LEASE, limit=100, queue=queue)


async def test_a_dependent_waits_without_an_attempt_until_all_its_dependencies_complete(
    store: TaskStore,
) -> None:
    a = await store.add_task(new_task(T0, name="a"))
    b = await store.add_task(new_task(T0, name="b"))
    d = await store.add_task(new_task(T0, name="d", depends_on=(a.id, b.id)))
    assert d.waiting_on_dependencies
    claims = {c.task.name: c for c in await claim_all(store, T0 + 1)}
    assert sorted(claims) == ["a", "b"]
    # Its run time is no time to wake for.
    assert await store.run(logic.next_run_at(now=T0 + 1)) is None
    await store.finish(claims["a"], Completed({"from": "a"}), now=T0 + 2)
    assert (await store.get_task(d.id)).waiting_on_dependencies  # type: ignore[union-attr]
    assert await claim_all(store, T0 + 2) == []
    await store.finish(claims["b"], Completed(2), now=T0 + 3)
    released = await store.get_task(d.id)
    assert released is not None
    assert not released.waiting_on_dependencies
    assert released.status is TaskStatus.PENDING
    assert released.attempts == 0
    assert released.run_at.timestamp() == T0 + 3
    (claimed,) = await claim_all(store, T0 + 3)
    assert claimed.task.id == d.id
    assert claimed.attempt == 1
    assert claimed.task.depends_on == (a.id, b.id)
    assert await store.run(logic.dependencies_of(d.id)) == {
        a.id: (TaskStatus.COMPLETED, {"from": "a"}),
        b.id: (TaskStatus.COMPLETED, 2),
    }


async def test_a_dependency_that_fails_cancels_its_dependents_in_turn_naming_it(
    store: TaskStore,
) -> None:
    a = await store.add_task(new_task(T0, name="a"))
    b = await store.add_task(new_task(T0, name="b", depends_on=(a.id,)))
    c = await store.add_task(new_task(T0, name="c", depends_on=(b.id,)))
    anyway = await store.add_task(
        new_task(T0, name="anyway", depends_on=(a.id,), on_dependency_failure="run")
    )
    (claimed,) = await claim_all(store, T0 + 1)
    await store.finish(claimed, Failed("E", "broken", ErrorCategory.VALIDATION), now=T0 + 2)
    got = by_id(await store.get_tasks([b.id, c.id, anyway.id]))
    assert got[b.id].status is TaskStatus.CANCELLED
    assert got[b.id].error_type == "DependencyFailedError"
    assert f"task_id:{a.id} failed" in (got[b.id].error_message or "")
    assert got[c.id].status is TaskStatus.CANCELLED
    assert f"task_id:{b.id} was cancelled" in (got[c.id].message or "")
    assert got[anyway.id].status is TaskStatus.PENDING
    assert not got[anyway.id].waiting_on_dependencies
    # What that finish cancelled, for a worker to announce.
    announced = await store.run(logic.cancelled_dependents([a.id], now=T0 + 2))
    assert [t.id for t in announced] == [b.id, c.id]
    assert await store.run(logic.cancelled_dependents([a.id], now=T0 + 3)) == []
    (ran,) = await claim_all(store, T0 + 2)
    assert ran.task.id == anyway.id
    assert await store.run(logic.dependencies_of(anyway.id)) == {a.id: (TaskStatus.FAILED, None)}


async def test_a_retried_dependency_is_not_finished(store: TaskStore) -> None:
    a = await store.add_task(new_task(T0, name="a"))
    d = await store.add_task(new_task(T0, depends_on=(a.id,)))
    (claimed,) = await claim_all(store, T0)
    retry = Failed("E", "again", ErrorCategory.NETWORK, retry_at=T0 + 5)
    await store.finish(claimed, retry, now=T0 + 1)
    assert (await store.get_task(d.id)).waiting_on_dependencies  # type: ignore[union-attr]
    (again,) = await claim_all(store, T0 + 5)
    await store.finish(again, Completed(), now=T0 + 6)
    assert [c.task.id for c in await claim_all(store, T0 + 6)] == [d.id]


async def test_cancelling_a_waiting_dependency_cancels_its_dependents(store: TaskStore) -> None:
    a = await store.add_task(new_task(T0, name="a"))
    d = await store.add_task(new_task(T0, depends_on=(a.id,)))
    await store.request_cancel(a.id, now=T0 + 1)
    record = await store.get_task(d.id)
    assert record is not None
    assert record.status is TaskStatus.CANCELLED
    assert f"task_id:{a.id} was cancelled" in (record.error_message or "")
    # A dependent that is itself cancelled while waiting goes quietly.
    x = await store.add_task(new_task(T0, name="x"))
    y = await store.add_task(new_task(T0, depends_on=(x.id,)))
    await store.request_cancel(y.id, now=T0 + 2)
    (claimed,) = await claim_all(store, T0 + 2)
    assert claimed.task.id == x.id
    await store.finish(claimed, Completed(), now=T0 + 3)
    assert (await store.get_task(y.id)).status is TaskStatus.CANCELLED  # type: ignore[union-attr]


async def test_dependencies_are_checked_when_the_dependent_is_stored(store: TaskStore) -> None:
    a = await store.add_task(new_task(T0, name="a"))
    with pytest.raises(DependencyNotFoundError, match="depends_on: no task nope") as raised:
        await store.add_task(new_task(T0, depends_on=(a.id, "nope")))
    assert raised.value.missing == ["nope"]
    assert (await store.count_tasks())[TaskStatus.PENDING] == 1  # nothing else stored
    # A batch may depend on its own earlier tasks (no cycle can be built), not later ones.
    first, second = new_task(T0, name="first"), new_task(T0, name="second")
    later = new_task(T0, name="later", depends_on=(second.id,))
    with pytest.raises(ValueError, match="comes after it"):
        await store.add_tasks([first, later, second])
    assert (await store.count_tasks())[TaskStatus.PENDING] == 1
    chained = new_task(T0, name="chained", depends_on=(first.id,))
    await store.add_tasks([first, chained])
    assert (await store.get_task(chained.id)).waiting_on_dependencies  # type: ignore[union-attr]


async def test_dependencies_finished_before_the_submit_count_as_they_finished(
    store: TaskStore,
) -> None:
    done = await store.add_task(new_task(T0, name="done"))
    broken = await store.add_task(new_task(T0, name="broken"))
    for claimed in await claim_all(store, T0):
        outcome = (
            Completed(7)
            if claimed.task.id == done.id
            else Failed("E", "x", ErrorCategory.VALIDATION)
        )
        await store.finish(claimed, outcome, now=T0 + 1)
    ready = await store.add_task(new_task(T0 + 2, depends_on=(done.id,)))
    doomed = await store.add_task(new_task(T0 + 2, depends_on=(done.id, broken.id)))
    got = by_id(await store.get_tasks([ready.id, doomed.id]))
    assert got[ready.id].status is TaskStatus.PENDING
    assert got[ready.id].run_at.timestamp() == T0 + 2
    assert got[doomed.id].status is TaskStatus.CANCELLED
    assert f"task_id:{broken.id} failed" in (got[doomed.id].error_message or "")


async def test_retention_keeps_the_dependencies_of_tasks_still_to_run(store: TaskStore) -> None:
    a = await store.add_task(new_task(T0, name="a"))
    b = await store.add_task(new_task(T0, name="b"))
    d = await store.add_task(new_task(T0, depends_on=(a.id, b.id)))
    for claimed in await claim_all(store, T0):
        if claimed.task.id == a.id:
            await store.finish(claimed, Completed("a"), now=T0 + 1)
    assert await cleanup(store, before=T0 + 100) == 0  # d still waits for b, and reads a
    assert await store.get_task(a.id) is not None
    await store.request_cancel(d.id, now=T0 + 2)
    assert await cleanup(store, before=T0 + 100) == 2  # a, and d (b still runs)
    assert await store.get_task(a.id) is None


async def test_reap_settles_dependents_of_lost_tasks_and_any_settle_that_was_lost(
    store: TaskStore,
) -> None:
    a = await store.add_task(new_task(T0, name="a", max_lost_attempts=1))
    d = await store.add_task(new_task(T0, depends_on=(a.id,)))
    result = await lose(store, T0)
    assert [t.id for t in result.failed] == [a.id]
    assert (await store.get_task(d.id)).status is TaskStatus.CANCELLED  # type: ignore[union-attr]
    # A dependency finished by a process that died before settling its dependents (where
    # those are two transactions): the next reap releases them.
    x = await store.add_task(new_task(T0, name="x"))
    y = await store.add_task(new_task(T0, depends_on=(x.id,)))
    await store.run(
        run_script(
            f"UPDATE background_tasks SET status = 'completed', finished_at = 1 WHERE id = '{x.id}'"
        )
    )
    result = await reap(store, now=T0 + 2 * LEASE, decide=lambda t: None)
    assert result.released == [y.id]
    assert [c.task.id for c in await claim_all(store, T0 + 2 * LEASE)] == [y.id]


async def test_complete_many_answers_each_as_finish_would_alone(store: TaskStore) -> None:
    """A worker's group of completions in one call: each stored row is what a finish of
    its own would leave (progress 1, the message it had, its result), a stale token and a
    second completion of one attempt in the lot get LeaseLostError in their place and
    change nothing, and a dependent of two of them is released."""
    tasks = [await store.add_task(new_task(T0, payload={"i": i})) for i in range(4)]
    dependent = await store.add_task(new_task(T0, name="d", depends_on=(tasks[0].id, tasks[1].id)))
    claims = await store.claim(worker_id="w1", now=T0, lease_seconds=LEASE, limit=4)
    await store.save_progress([ProgressSnapshot(claims[1].task.id, 0.5, "half", None, T0 + 1)])
    stale = Claim(claims[3].task, LeaseToken(claims[3].task.id, "w1", claims[3].token.fence - 1))
    results = await store.complete_many(
        [
            (claims[0], Completed({"n": 0}), T0 + 2),
            (claims[1], Completed(None), T0 + 3),
            (stale, Completed(3), T0 + 3),
            (claims[2], Completed([2]), T0 + 4),
            (claims[0], Completed("again"), T0 + 5),
        ]
    )
    assert isinstance(results[2], LeaseLostError)
    assert isinstance(results[4], LeaseLostError)
    ended = [results[0], results[1], results[3]]
    assert all(isinstance(r, TaskRecord) for r in ended)
    assert by_id(ended) == by_id(await store.get_tasks([c.task.id for c in claims[:3]]))
    assert [(r.status, r.progress, r.message, r.result) for r in ended] == [
        (TaskStatus.COMPLETED, 1.0, None, {"n": 0}),
        (TaskStatus.COMPLETED, 1.0, "half", None),
        (TaskStatus.COMPLETED, 1.0, None, [2]),
    ]
    still = await store.get_task(claims[3].task.id)
    assert still is not None
    assert still.status is TaskStatus.RUNNING
    assert [e.outcome for e in await store.list_executions(claims[0].task.id)] == [
        ExecutionOutcome.COMPLETED
    ]
    (released,) = await claim_all(store, T0 + 6)
    assert released.task.id == dependent.id
    assert await store.complete_many([]) == []


async def test_write_completions_answers_what_the_record_needs(store: TaskStore) -> None:
    """complete_many without its records: each completion written answered with the
    message its row kept, from which (with its claim) the finished record is the stored
    row; a lease no longer held gets LeaseLostError and changes nothing."""
    tasks = [await store.add_task(new_task(T0, payload={"i": i})) for i in range(3)]
    claims = await store.claim(worker_id="w1", now=T0, lease_seconds=LEASE, limit=3)
    await store.save_progress([ProgressSnapshot(claims[1].task.id, 0.5, "half", None, T0 + 1)])
    stale = Claim(claims[2].task, LeaseToken(claims[2].task.id, "w1", claims[2].token.fence - 1))
    items = [
        (claims[0], Completed({"n": 0}), T0 + 2),
        (claims[1], Completed(None), T0 + 3),
        (stale, Completed(3), T0 + 3),
    ]
    written = await store.write_completions(items)
    assert written[:2] == [logic.Written(None), logic.Written("half")]
    assert isinstance(written[2], LeaseLostError)
    built = [
        logic.finished_record(
            claimed.task, logic.outcome_params(done), progress=1.0, message=w.message, now=now
        )
        for (claimed, done, now), w in zip(items[:2], written[:2], strict=True)
        if isinstance(w, logic.Written)
    ]
    assert by_id(built) == by_id(await store.get_tasks([t.id for t in tasks[:2]]))
    still = await store.get_task(tasks[2].id)
    assert still is not None
    assert still.status is TaskStatus.RUNNING
    assert await store.write_completions([]) == []


async def test_completions_together_release_a_dependent_once(store: TaskStore) -> None:
    deps = [await store.add_task(new_task(T0, name=f"dep{i}")) for i in range(4)]
    d = await store.add_task(new_task(T0, name="d", depends_on=tuple(t.id for t in deps)))
    claims = await claim_all(store, T0)
    assert len(claims) == 4
    await together(
        store,
        [
            lambda c=c: store.finish(c, Completed(c.task.name), now=T0 + 1)  # type: ignore[misc]
            for c in claims
        ],
    )
    (claimed,) = await claim_all(store, T0 + 1)
    assert claimed.task.id == d.id
    found = await store.run(logic.dependencies_of(d.id))
    assert {dep: result for dep, (_, result) in found.items()} == {t.id: t.name for t in deps}


async def test_claims_take_only_their_queue(store: TaskStore) -> None:
    await store.add_task(new_task(T0, name="mail", queue="mail"))
    await store.add_task(new_task(T0, name="plain"))
    assert [c.task.name for c in await claim_all(store, T0, queue="mail")] == ["mail"]
    assert [c.task.name for c in await claim_all(store, T0, queue="other")] == []
    (plain,) = await claim_all(store, T0)
    assert plain.task.name == "plain"
    assert plain.task.queue == "default"


async def test_aging_lets_a_long_waiting_low_task_pass_newer_high_ones(store: TaskStore) -> None:
    """With 60 s a level, a low task (rank 0) that has waited 130 s outranks high tasks
    (rank 2) that became eligible 120 s after it, but not ones of 110 s."""

    def aged(now: float, priority: int, name: str) -> NewTask:
        key = dispatch_key(now, priority, aging_seconds=60.0)
        return new_task(now, priority=priority, name=name, dispatch_at=key)

    await store.add_task(aged(T0 + 110, 2, "high-110"))
    await store.add_task(aged(T0, 0, "low"))
    await store.add_task(aged(T0 + 130, 2, "high-130"))
    await store.add_task(aged(T0 + 125, 3, "critical-125"))
    claims = await claim_all(store, T0 + 200)
    assert [c.task.name for c in claims] == ["critical-125", "high-110", "low", "high-130"]
    # A retry moves the key with the run time: the low task lines up again from then.
    low = next(c for c in claims if c.task.name == "low")
    await store.finish(low, Failed("E", "x", ErrorCategory.NETWORK, retry_at=T0 + 300), now=T0)
    await store.add_task(aged(T0 + 350, 2, "high-350"))
    await store.add_task(aged(T0 + 450, 2, "high-450"))
    names = [c.task.name for c in await claim_all(store, T0 + 500)]
    assert names == ["high-350", "low", "high-450"]


# --- rate limits, concurrency keys, fair queueing ------------------------------------------

TWO_PER_SECOND = ClaimLimits(rates={"api": RateSpec(requests=2, per=1.0)})


async def claim_limited(
    store: TaskStore, now: float, limits: ClaimLimits, limit: int = 10, horizon: float = 0.0
) -> list[Claim]:
    return await store.claim(
        worker_id="w1", now=now, lease_seconds=LEASE, limit=limit, limits=limits, horizon=horizon
    )


async def test_a_rate_limited_claim_takes_one_slot_a_task_and_defers_the_rest_to_theirs(
    store: TaskStore,
) -> None:
    tasks = [new_task(T0, rate_keys=(("api", "api"),)) for _ in range(4)]
    plain = new_task(T0)
    await store.add_tasks([*tasks, plain])
    claimed = await claim_limited(store, T0, TWO_PER_SECOND)
    # Two a second, evenly spaced: one now; the unlimited task is not held up.
    assert [c.task.id for c in claimed] == [tasks[0].id, plain.id]
    assert claimed[0].task.rate_keys == (("api", "api"),)
    waiting = {t.id: await store.get_task(t.id) for t in tasks[1:]}
    # Each waits for its own slot, half a second apart, and spent no attempt.
    slots = [waiting[t.id].run_at.timestamp() for t in tasks[1:]]  # type: ignore[union-attr]
    assert slots == pytest.approx([T0 + 0.5, T0 + 1.0, T0 + 1.5])
    assert all(w is not None and w.attempts == 0 for w in waiting.values())
    assert await store.run(logic.next_run_at(now=T0)) == pytest.approx(T0 + 0.5)
    assert await claim_limited(store, T0 + 0.4, TWO_PER_SECOND) == []
    again = await claim_limited(store, T0 + 0.5, TWO_PER_SECOND)
    assert [c.task.id for c in again] == [tasks[1].id]
    # The state is shared: another worker's claim (another store on the database too)
    # sees the slot taken.
    states = await store.run(logic.rate_limit_states())
    assert [(s.key, s.name, s.requests) for s in states] == [("api", "api", 2)]
    assert states[0].next_free_at == pytest.approx(T0 + 1.0)


async def test_a_key_under_a_limit_this_worker_does_not_know_is_not_limited(
    store: TaskStore,
) -> None:
    tasks = [new_task(T0, rate_keys=(("other", "other"),)) for _ in range(3)]
    await store.add_tasks(tasks)
    assert len(await claim_limited(store, T0, TWO_PER_SECOND)) == 3


async def test_a_task_of_a_full_concurrency_key_waits_while_other_keys_run(
    store: TaskStore,
) -> None:
    limits = ClaimLimits(rates={}, max_running_per_key=2)
    a = [new_task(T0, concurrency_key="user:a") for _ in range(4)]
    b = new_task(T0, concurrency_key="user:b")
    await store.add_tasks([*a, b])
    first = await claim_limited(store, T0, limits, limit=2)
    assert [c.task.id for c in first] == [a[0].id, a[1].id]
    # A's key is full: the next claim passes over A's tasks to B's.
    second = await claim_limited(store, T0 + 1, limits, limit=2)
    assert [c.task.id for c in second] == [b.id]
    assert await store.run(logic.running_per_key()) == {"user:a": 2, "user:b": 1}
    await store.finish(first[0], Completed(result=None), now=T0 + 2)
    third = await claim_limited(store, T0 + 3, limits, limit=5)
    assert [c.task.id for c in third] == [a[2].id]
    record = await store.get_task(a[3].id)
    assert record is not None
    assert record.attempts == 0
    assert record.status is TaskStatus.PENDING


async def test_fair_queueing_places_another_keys_task_among_a_batch(store: TaskStore) -> None:
    batch = [new_task(T0, concurrency_key="user:a") for _ in range(5)]
    await store.add_tasks(batch, fair_share=1.0)
    single = new_task(T0 + 0.5, concurrency_key="user:b")
    await store.add_tasks([single], fair_share=1.0)
    limits = ClaimLimits(rates={})
    # With a horizon, places ahead of now are claimable: dispatch order is A, A, B, A...
    claimed = await claim_limited(store, T0 + 0.5, limits, limit=3, horizon=3600)
    assert [c.task.id for c in claimed] == [batch[0].id, single.id, batch[1].id]
    listed = await store.list_tasks(statuses=[TaskStatus.PENDING], order="dispatch")
    assert [t.id for t in listed] == [t.id for t in batch[2:]]


async def test_a_step_acquires_a_rate_limit_and_reconciles_its_tokens(store: TaskStore) -> None:
    spec = RateSpec(requests=10, per=1.0, tokens=100)
    acquire = logic.acquire_rate
    assert await store.run(acquire(name="llm", key="llm:p:m", spec=spec, now=T0)) == 0.0
    # The next request's slot is one interval (0.1 s) later.
    wait = await store.run(acquire(name="llm", key="llm:p:m", spec=spec, now=T0))
    assert wait == pytest.approx(0.1)
    await store.run(logic.report_tokens(name="llm", key="llm:p:m", spec=spec, tokens=250, now=T0))
    # 250 tokens at 100 a second are paid back at T0 + 2.5; a request may go once less
    # than a window's worth (100) is unpaid: at T0 + 1.5.
    wait = await store.run(acquire(name="llm", key="llm:p:m", spec=spec, now=T0 + 1))
    assert wait == pytest.approx(0.5)
    assert await store.run(acquire(name="llm", key="llm:p:m", spec=spec, now=T0 + 1.5)) == 0.0
    (state,) = await store.run(logic.rate_limit_states())
    assert (state.requests, state.tokens) == (2, 250)
    # A claim of a task with the key sees the same state.
    task = new_task(T0 + 1.5, rate_keys=(("llm", "llm:p:m"),))
    await store.add_tasks([task])
    limits = ClaimLimits(rates={"llm": spec})
    assert await claim_limited(store, T0 + 1.5, limits) == []
    record = await store.get_task(task.id)
    assert record is not None
    assert record.run_at.timestamp() == pytest.approx(T0 + 1.6)


async def test_retry_budget_counts_calls_and_retries_per_dependency(store: TaskStore) -> None:
    for now, retry in [(T0, False), (T0, True), (T0 + 1, False), (T0 + 5, True)]:
        await store.run(logic.count_retry_budget(dependency="llm", retry=retry, now=now))
    await store.run(logic.count_retry_budget(dependency="other", retry=True, now=T0))
    window = logic.retry_budget_window
    assert await store.run(window(dependency="llm", since=T0)) == (4, 2)
    assert await store.run(window(dependency="llm", since=T0 + 1)) == (2, 1)
    assert await store.run(window(dependency="none", since=T0)) == (0, 0)
    await store.run(logic.delete_retry_budget(before=T0 + 1))
    assert await store.run(window(dependency="llm", since=0)) == (2, 1)
