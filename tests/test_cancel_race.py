"""Cancels from an API process racing tasks that run in a real worker process, on each
backend; and, in one process, the paths a cancel takes to a worker that does not hear its
notice in time (the heartbeat), or hears it before its claim of the task returned.

The API process is an HTTP server (real uvicorn, ``background_tasks.enabled: false``);
the worker is ``vpsweb-tasks worker --import tests.mp_tasks``. Its ``mp_gated`` tasks
connect to a TCP gate in this test, so the test sees each run start, sees its work end
(``DONE``) or stop (the connection closes without a word, at the moment the worker's
cancel scope tore it down), and can release a task to finish at once. A task the test
cancels without releasing it ends by itself ``NATURAL`` seconds after the gate's go, which
the test gives it as it sends the cancel: a cancel the worker does not hear of within that
time loses to completion. (Timed from the cancel, not the task's start: a busy machine
can take longer than that to start a wave.)

The worker's poll interval and heartbeat are far longer than that natural end: only the
notice path (PostgreSQL's NOTIFY, SQLite's watch of the file) can stop the tasks in time.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
from anyio.abc import SocketAttribute
from anyio.streams.buffered import BufferedByteReceiveStream

from vpsweb_tasks import TaskContext, TaskDefinition, TaskManager, TaskStatus, load_config
from vpsweb_tasks.config import Settings
from vpsweb_tasks.models import ExecutionOutcome
from vpsweb_tasks_http import create_app

from .http_server import serve
from .mp_support import Worker, poll, unused_handler, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TASKS = "/api/v1/background-tasks"
COUNT = 200
WAVE = 50  # tasks running at once in the worker
NATURAL = 5.0  # seconds after its go at which an unreleased task ends by itself
#: The worker's queue_check_interval and lease: it polls and heartbeats every 10 s.
INTERVAL, LEASE = 10.0, 60.0


@dataclass
class Run:
    """One run of an ``mp_gated`` task, as the gate sees it."""

    task_id: str
    stream: anyio.abc.SocketStream
    started_at: float
    ended_at: float | None = None
    done: bool = False
    """The task's work returned (it said DONE); False: it was torn down."""
    ended: anyio.Event = field(default_factory=anyio.Event)


class Gate:
    """The test's end of the ``mp_gated`` tasks' connections."""

    def __init__(self) -> None:
        self.runs: dict[str, Run] = {}
        self._arrived = anyio.Event()

    async def start(self, tg: anyio.abc.TaskGroup) -> int:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        tg.start_soon(self._serve, listener)
        return int(listener.extra(SocketAttribute.local_port))

    async def _serve(self, listener: anyio.abc.SocketListener) -> None:
        async with listener:
            await listener.serve(self._handle)

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            reader = BufferedByteReceiveStream(stream)
            task_id = (await reader.receive_until(b"\n", 100)).decode()
            run = Run(task_id, stream, time.monotonic())
            self.runs[task_id] = run
            self._arrived.set()
            self._arrived = anyio.Event()
            with suppress(anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                run.done = await reader.receive_until(b"\n", 10) == b"DONE"
            run.ended_at = time.monotonic()
            run.ended.set()

    async def started(self, task_ids: list[str], *, timeout: float) -> None:
        with anyio.fail_after(timeout):
            while not all(task_id in self.runs for task_id in task_ids):
                await self._arrived.wait()

    async def go(self, task_id: str) -> None:
        """Starts the natural-end clock of the run."""
        await self._say(task_id, b"g")

    async def release(self, task_id: str) -> None:
        await self._say(task_id, b"x")

    async def _say(self, task_id: str, word: bytes) -> None:
        with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self.runs[task_id].stream.send(word)


@dataclass
class Cancel:
    task_id: str
    plan: str
    """``cancel``: cancelled while it works; ``race``: released, then cancelled at once."""
    sent_at: float = 0.0
    status_code: int = 0
    body: dict[str, Any] = field(default_factory=dict)


@pytest.fixture
def worker(tmp_path: Path, storage: dict[str, Any]) -> Iterator[Worker]:
    config = write_config(
        tmp_path / "worker.yaml",
        storage,
        max_concurrent_jobs=WAVE,
        queue_check_interval=INTERVAL,
        lease_seconds=LEASE,
    )
    process = Worker(config, tmp_path / "runs.log", tmp_path / "worker.stderr")
    yield process
    process.close()


@pytest.fixture
async def client(tmp_path: Path, storage: dict[str, Any]) -> AsyncIterator[httpx.AsyncClient]:
    """HTTP to an API-only server in this process: it submits and cancels."""
    config = write_config(tmp_path / "api.yaml", storage, enabled=False)
    manager = TaskManager(load_config(config))
    manager.register("mp_gated", unused_handler)
    app = create_app(manager=manager)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        yield http


def summary(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return (
        f"{len(ordered)} cancels: median {statistics.median(ordered) * 1000:.0f} ms,"
        f" p99 {p99 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms"
    )


async def test_every_accepted_cancel_stops_a_task_running_in_another_process(
    backend: str, client: httpx.AsyncClient, worker: Worker
) -> None:
    await worker.ready()
    rng = random.Random(17)
    gate = Gate()
    cancels: list[Cancel] = []

    async def cancel(order: Cancel, delay: float) -> None:
        await anyio.sleep(delay)  # spreads the cancels over the wave: pacing, not a wait
        if order.plan == "race":
            await gate.release(order.task_id)
        else:
            await gate.go(order.task_id)
        order.sent_at = time.monotonic()
        response = await client.post(f"{TASKS}/cancel/{order.task_id}")
        order.status_code, order.body = response.status_code, response.json()

    async with anyio.create_task_group() as tg:
        port = await gate.start(tg)
        for _ in range(COUNT // WAVE):
            wave: list[str] = []
            for n in range(WAVE):
                body = {
                    "task_name": f"gated {n}",
                    "task_type": "mp_gated",
                    "payload": {"port": port, "seconds": NATURAL, "n": n},
                }
                response = await client.post(f"{TASKS}/submit", json=body)
                assert response.status_code == 202, response.text
                wave.append(response.json()["task_id"])
            await gate.started(wave, timeout=30)
            orders = [Cancel(task_id, rng.choice(["cancel"] * 3 + ["race"])) for task_id in wave]
            cancels += orders
            async with anyio.create_task_group() as senders:
                for order in orders:
                    senders.start_soon(cancel, order, rng.uniform(0.0, 0.2))
            with anyio.fail_after(NATURAL + 20):
                for task_id in wave:
                    await gate.runs[task_id].ended.wait()
        tg.cancel_scope.cancel()

    task_ids = [order.task_id for order in cancels]

    async def settled() -> bool:
        response = await client.get(f"{TASKS}/active", params={"limit": 1000})
        return not response.json()["tasks"]

    await poll(settled, timeout=30)
    finals = {}
    for task_id in task_ids:
        response = await client.get(f"{TASKS}/status/{task_id}")
        finals[task_id] = response.json()

    lost: list[str] = []
    latencies: list[float] = []
    for order in cancels:
        run, final = gate.runs[order.task_id], finals[order.task_id]
        if order.status_code == 409:
            # Already finished when the cancel came: said so, and it was its own work.
            assert order.plan == "race", order
            assert "completed" in order.body["detail"], order
            assert (final["status"], run.done) == ("completed", True), order
            continue
        assert order.status_code == 200, order
        # The answer says which: cancelled, or a cancel was requested of a running task.
        said = (order.body["status"], order.body["cancel_requested"])
        assert said in {("cancelled", False), ("running", True)}, order
        if run.done:
            # Its work had returned (only a released task's can, before NATURAL).
            assert final["status"] in ("completed", "cancelled"), (order, final)
            if order.plan == "cancel":
                lost.append(order.task_id)
            continue
        assert final["status"] == "cancelled", (order, final)
        [execution] = final["executions"]
        assert (execution["outcome"], execution["worker_id"]) == (
            ExecutionOutcome.CANCELLED.value,
            worker.worker_id,
        )
        assert run.ended_at is not None
        if order.plan == "cancel":
            latencies.append(run.ended_at - order.sent_at)
    planned = sum(order.plan == "cancel" for order in cancels)
    assert not lost, f"{len(lost)} of {planned} cancels lost to completion ({backend})"
    assert len(latencies) == planned
    print(f"\n{backend}: cancel to stop, {summary(latencies)}")
    assert await worker.stop() == 0, worker.stderr()
    assert {TaskStatus(final["status"]) for final in finals.values()} <= {
        TaskStatus.CANCELLED,
        TaskStatus.COMPLETED,
    }


async def test_without_notices_the_heartbeat_sees_a_cancel_within_the_check_interval(
    settings_factory: Callable[..., Settings],
) -> None:
    """The fallback: no watch of the file, so the heartbeat must find the request, within
    ``queue_check_interval`` of the task's start even if the worker had been idle (an idle
    heartbeat only renews the worker row, every lease / 3)."""
    interval, lease = 0.2, 30.0
    worker_settings = settings_factory(
        background_tasks={"queue_check_interval": interval, "lease_seconds": lease},
        storage={"sqlite_watch_interval": 0},
    )
    api_settings = settings_factory(background_tasks={"enabled": False})
    started, stopped = anyio.Event(), anyio.Event()

    async def block(context: TaskContext) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            stopped.set()

    async with TaskManager(worker_settings) as worker, TaskManager(api_settings) as api:
        worker.register("block", block)
        api.register("block", unused_handler)
        context = await api.submit(TaskDefinition(name="block", task_type="block"))
        with anyio.fail_after(10):
            await started.wait()
        requested = time.monotonic()
        answer = await api.cancel(context.task_id)
        assert (answer.status, answer.cancel_requested) == (TaskStatus.RUNNING, True)
        with anyio.fail_after(lease / 3):
            await stopped.wait()
        elapsed = time.monotonic() - requested
        assert elapsed < interval + 1.0, f"the heartbeat saw the cancel after {elapsed:.2f}s"
        record = await worker.wait(context.task_id, timeout=10)
        assert record.status is TaskStatus.CANCELLED


async def test_a_cancel_heard_before_the_claim_returned_stops_the_task_before_it_starts(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel notice can overtake the answer to the claim that took the task (on
    PostgreSQL they come over different connections): the worker keeps it until the
    claim is in, and the task is cancelled without its handler ever starting."""
    worker_settings = settings_factory(
        background_tasks={"queue_check_interval": 10.0, "lease_seconds": 60.0},
        storage={"sqlite_watch_interval": 0},  # the notice below is the only one
    )
    api_settings = settings_factory(background_tasks={"enabled": False})
    ran = False

    async def work(context: TaskContext) -> None:
        nonlocal ran
        ran = True

    async with TaskManager(worker_settings) as worker, TaskManager(api_settings) as api:
        worker.register("work", work)
        api.register("work", unused_handler)
        claim = worker.store.claim

        async def claim_overtaken_by_a_cancel(**options: Any) -> Any:
            claims = await claim(**options)
            for each in claims:
                answer = await api.cancel(each.task.id)
                assert answer.cancel_requested
                worker.queue._on_notice("cancel_requested", each.task.id)
            return claims

        monkeypatch.setattr(worker.store, "claim", claim_overtaken_by_a_cancel)
        context = await api.submit(TaskDefinition(name="work", task_type="work"))
        worker.queue.notify()
        record = await worker.wait(context.task_id, timeout=5)  # the heartbeat: 10 s
        assert record.status is TaskStatus.CANCELLED
        assert not ran
        [execution] = await worker.list_executions(context.task_id)
        assert execution.outcome is ExecutionOutcome.CANCELLED


async def test_a_busy_database_costs_a_worker_one_cancel_check_per_watch_interval(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's watch says only that the file changed. A worker looks for cancel requests
    on such a notice only while it runs tasks, and at most once per watch interval
    however many notices come, yet a cancel among the changes still stops its task."""
    watch = 0.05
    worker_settings = settings_factory(
        background_tasks={"queue_check_interval": 10.0, "lease_seconds": 60.0},
        storage={"sqlite_watch_interval": watch},
    )
    api_settings = settings_factory(
        background_tasks={"enabled": False, "max_queue_size": 1_000_000}
    )
    started, stopped = anyio.Event(), anyio.Event()

    async def block(context: TaskContext) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            stopped.set()

    async with TaskManager(worker_settings) as worker, TaskManager(api_settings) as api:
        worker.register("block", block)
        api.register("block", unused_handler)
        api.register("elsewhere", unused_handler)  # a type this worker does not run
        checks = 0
        run = worker.store.run

        async def counting(operation: Any) -> Any:
            nonlocal checks
            checks += operation.fn.__name__ == "cancel_requests"
            return await run(operation)

        monkeypatch.setattr(worker.store, "run", counting)

        async def storm(seconds: float) -> int:
            """Commits as fast as they go; each is also told to the worker at once, as a
            backend that reported every commit would (the watch reports one per interval)."""
            commits = 0
            with anyio.move_on_after(seconds):
                while True:
                    await api.submit(TaskDefinition(name="noise", task_type="elsewhere"))
                    worker.queue._on_notice("changed", "")
                    commits += 1
            return commits

        assert await storm(0.5) > 50
        assert checks == 0  # nothing running here: nothing to look for

        context = await api.submit(TaskDefinition(name="block", task_type="block"))
        with anyio.fail_after(10):
            await started.wait()
        checks = 0
        storming = 1.0
        commits = await storm(storming)
        assert 0 < checks <= storming / watch + 2, (checks, commits)
        assert commits > 10 * checks

        answer = await api.cancel(context.task_id)
        assert answer.cancel_requested
        with anyio.fail_after(2.0):  # the heartbeat would take 10 s
            await stopped.wait()
        assert (await worker.wait(context.task_id, timeout=10)).status is TaskStatus.CANCELLED
