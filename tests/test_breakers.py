"""Circuit breakers: pybreaker's state machine under anyio, on a fake clock, against a
real (loopback) failing HTTP server."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import httpx
import pybreaker
import pytest

from vpsweb_tasks import (
    BreakerConfig,
    BreakerRegistry,
    CircuitOpenError,
    ErrorCategory,
    ExecutionRecord,
    TaskContext,
    TaskDefinition,
    TaskManager,
    TaskStatus,
    classify_error,
    get_breaker,
    get_breaker_registry,
    with_circuit_breaker,
)
from vpsweb_tasks import retry as retry_module
from vpsweb_tasks.breakers import (
    Breaker,
    BreakerState,
    ClockedMemoryStorage,
    set_breaker_registry,
)
from vpsweb_tasks.config import Settings
from vpsweb_tasks.errors import ConfigError
from vpsweb_tasks.events import (
    BreakerStateChanged,
    TaskCompleted,
    TaskDeferred,
    TaskFailed,
    TaskRetryScheduled,
)
from vpsweb_tasks.models import ExecutionOutcome

from .conftest import FakeClock
from .support import EventRecorder, LoopbackServer, Reply, loopback_server

pytestmark = pytest.mark.anyio


@pytest.fixture
def registry(clock: FakeClock) -> Iterator[BreakerRegistry]:
    """A process-wide registry on the fake clock, for this test only."""
    registry = BreakerRegistry(clock=clock)
    set_breaker_registry(registry)
    try:
        yield registry
    finally:
        set_breaker_registry(None)


def fetcher(client: httpx.AsyncClient, server: LoopbackServer) -> Callable[[], Awaitable[Any]]:
    async def fetch() -> Any:
        response = await client.get(server.url)
        response.raise_for_status()
        return response.json()

    return fetch


async def fail(breaker: Breaker, times: int, error: Exception | None = None) -> None:
    async def broken() -> None:
        raise error or ConnectionResetError("reset by peer")

    for _ in range(times):
        with pytest.raises(Exception) as caught:  # noqa: PT011 - any error but a rejection
            await breaker.call(broken)
        assert not isinstance(caught.value, CircuitOpenError)


def transitions(recorder: EventRecorder) -> list[tuple[str, str]]:
    return [(e.old_state, e.new_state) for e in recorder.of(BreakerStateChanged)]


# --- configuration and registry ---------------------------------------------------------


def test_defaults_and_the_registry(registry: BreakerRegistry) -> None:
    config = BreakerConfig()
    assert (config.failure_threshold, config.recovery_timeout, config.half_open_max_calls) == (
        5,
        60.0,
        3,
    )
    breaker = get_breaker("llm")
    assert breaker is registry.get("llm") is get_breaker_registry().get("llm", config)
    assert breaker.state is BreakerState.CLOSED
    assert "llm" in registry
    assert registry.names == ["llm"]
    with pytest.raises(ConfigError, match="already exists"):
        get_breaker("llm", BreakerConfig(failure_threshold=2))
    custom = BreakerRegistry(configs={"slow": BreakerConfig(recovery_timeout=5)})
    assert custom.get("slow").config.recovery_timeout == 5.0
    assert custom.get("other").config == BreakerConfig()
    with pytest.raises(ValueError, match="success_threshold"):
        BreakerConfig(half_open_max_calls=1, success_threshold=2)
    with pytest.raises(ValueError, match="name"):
        registry.get("")


# --- against a failing server -----------------------------------------------------------


async def test_it_opens_after_the_threshold_and_then_rejects_without_calling(
    registry: BreakerRegistry, clock: FakeClock
) -> None:
    recorder = EventRecorder()
    registry.add_listener(recorder)
    breaker = registry.get("provider")
    async with loopback_server() as server, httpx.AsyncClient() as client:
        fetch = fetcher(client, server)
        server.always(Reply(500))
        for _ in range(5):
            # Every failure, the one that trips the breaker included, is the server's error.
            with pytest.raises(httpx.HTTPStatusError, match="500"):
                await breaker.call(fetch)
        stats = breaker.statistics()
        assert (stats.state, stats.failures, stats.consecutive_failures) == (
            BreakerState.OPEN,
            5,
            5,
        )
        assert (stats.opened_at, stats.retry_at) == (clock.now, clock.now + 60)
        assert transitions(recorder) == [("closed", "open")]
        assert recorder.events[0].retry_at == clock.now + 60

        clock.advance(59.5)
        for _ in range(3):
            with pytest.raises(CircuitOpenError) as caught:
                await breaker.call(fetch)
        assert server.calls == 5  # rejected without a call
        assert caught.value.retry_at == stats.retry_at
        assert caught.value.breaker == "provider"
        assert classify_error(caught.value) is ErrorCategory.EXTERNAL_SERVICE
        assert breaker.statistics().rejections == 3


async def test_half_open_lets_at_most_max_calls_through_then_closes_on_success(
    registry: BreakerRegistry, clock: FakeClock
) -> None:
    recorder = EventRecorder()
    registry.add_listener(recorder)
    breaker = registry.get("provider")
    async with loopback_server() as server, httpx.AsyncClient() as client:
        fetch = fetcher(client, server)
        server.always(Reply(503))
        for _ in range(5):
            with pytest.raises(httpx.HTTPStatusError):
                await breaker.call(fetch)

        clock.advance(60)
        server.always(Reply(200))
        server.hold()
        results: list[Any] = []
        rejected: list[CircuitOpenError] = []
        seven_rejected = anyio.Event()

        async def caller() -> None:
            try:
                results.append(await breaker.call(fetch))
            except CircuitOpenError as exc:
                rejected.append(exc)
                if len(rejected) == 7:
                    seven_rejected.set()

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(caller)
            await server.wait_for_calls(5 + 3)
            with anyio.fail_after(10):
                await seven_rejected.wait()
            stats = breaker.statistics()
            assert (stats.state, stats.half_open_calls) == (BreakerState.HALF_OPEN, 3)
            assert server.calls == 8  # three trials, seven rejected fast
            assert {exc.retry_at for exc in rejected} == {clock.now + 5.0}
            assert {exc.state for exc in rejected} == {"half-open"}
            server.release()
        assert len(results) == 3
        assert breaker.state is BreakerState.CLOSED
        assert transitions(recorder) == [
            ("closed", "open"),
            ("open", "half-open"),
            ("half-open", "closed"),
        ]
        assert await breaker.call(fetch) == {"call": 9}  # closed: calls flow again


async def test_a_failed_trial_opens_it_for_another_recovery_timeout(
    registry: BreakerRegistry, clock: FakeClock
) -> None:
    recorder = EventRecorder()
    registry.add_listener(recorder)
    breaker = registry.get("provider", BreakerConfig(failure_threshold=2, recovery_timeout=30))
    async with loopback_server() as server, httpx.AsyncClient() as client:
        fetch = fetcher(client, server)
        server.always(Reply(502))
        for _ in range(2):
            with pytest.raises(httpx.HTTPStatusError):
                await breaker.call(fetch)
        clock.advance(31)
        with pytest.raises(httpx.HTTPStatusError, match="502"):
            await breaker.call(fetch)  # the trial
        stats = breaker.statistics()
        assert (stats.state, stats.opened_at, stats.retry_at) == (
            BreakerState.OPEN,
            clock.now,
            clock.now + 30,
        )
        with pytest.raises(CircuitOpenError):
            await breaker.call(fetch)
        assert server.calls == 3
    assert transitions(recorder) == [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "open"),
    ]


async def test_permission_and_validation_errors_do_not_open_it(
    registry: BreakerRegistry,
) -> None:
    breaker = registry.get("provider", BreakerConfig(failure_threshold=2))
    async with loopback_server() as server, httpx.AsyncClient() as client:
        fetch = fetcher(client, server)
        server.reply(Reply(500))
        with pytest.raises(httpx.HTTPStatusError):
            await breaker.call(fetch)
        assert breaker.statistics().consecutive_failures == 1
        server.always(Reply(401))
        for _ in range(5):
            with pytest.raises(httpx.HTTPStatusError, match="401"):
                await breaker.call(fetch)
        server.always(Reply(422))
        with pytest.raises(httpx.HTTPStatusError, match="422"):
            await breaker.call(fetch)
    stats = breaker.statistics()
    # The service answered: each counts as a success and resets the failure count.
    assert (stats.state, stats.consecutive_failures, stats.failures, stats.successes) == (
        BreakerState.CLOSED,
        0,
        1,
        6,
    )


# --- anyio semantics ---------------------------------------------------------------------


async def test_cancellation_is_neither_success_nor_failure(registry: BreakerRegistry) -> None:
    breaker = registry.get("svc", BreakerConfig(failure_threshold=2))
    await fail(breaker, 1)
    entered = anyio.Event()

    async def hang() -> None:
        entered.set()
        await anyio.sleep_forever()

    for _ in range(3):
        entered = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(breaker.call, hang)
            await entered.wait()
            tg.cancel_scope.cancel()
    stats = breaker.statistics()
    # pybreaker on its own would have counted the first cancellation as the 2nd failure.
    assert (stats.state, stats.consecutive_failures, stats.failures, stats.successes) == (
        BreakerState.CLOSED,
        1,
        1,
        0,
    )
    with anyio.move_on_after(0.01):  # a timeout from outside is a cancellation too
        await breaker.call(hang)
    assert breaker.statistics().consecutive_failures == 1

    # A timeout *inside* the guarded call is the service being slow: a failure.
    async def slow() -> None:
        with anyio.fail_after(0.01):
            await anyio.sleep_forever()

    with pytest.raises(TimeoutError):
        await breaker.call(slow)
    assert breaker.state is BreakerState.OPEN


async def test_a_cancelled_trial_gives_its_slot_back(
    registry: BreakerRegistry, clock: FakeClock
) -> None:
    config = BreakerConfig(failure_threshold=1, recovery_timeout=10, half_open_max_calls=1)
    breaker = registry.get("svc", config)
    await fail(breaker, 1)
    clock.advance(10)
    entered = anyio.Event()

    async def hang() -> None:
        entered.set()
        await anyio.sleep_forever()

    async def ok() -> str:
        return "ok"

    async with anyio.create_task_group() as tg:
        tg.start_soon(breaker.call, hang)
        await entered.wait()
        with pytest.raises(CircuitOpenError, match="half-open"):
            await breaker.call(ok)  # the only slot is taken
        tg.cancel_scope.cancel()
    assert breaker.statistics().state is BreakerState.HALF_OPEN  # neither closed nor opened
    assert await breaker.call(ok) == "ok"  # the slot came back; the trial closes it
    assert breaker.state is BreakerState.CLOSED


async def test_calls_in_flight_when_it_opens_do_not_trip_it_again(
    registry: BreakerRegistry, clock: FakeClock
) -> None:
    recorder = EventRecorder()
    registry.add_listener(recorder)
    breaker = registry.get("svc", BreakerConfig(failure_threshold=2, recovery_timeout=30))
    gates = [anyio.Event() for _ in range(4)]
    finished = [anyio.Event() for _ in range(4)]

    async def call(n: int) -> None:
        async def slow_failure() -> None:
            await gates[n].wait()
            raise ConnectionResetError(f"call {n}")

        with pytest.raises(ConnectionResetError):
            await breaker.call(slow_failure)
        finished[n].set()

    async def finish(n: int) -> None:
        gates[n].set()
        with anyio.fail_after(10):
            await finished[n].wait()

    async with anyio.create_task_group() as tg:
        for n in range(4):
            tg.start_soon(call, n)  # all four admitted while closed
        await anyio.wait_all_tasks_blocked()
        await finish(0)
        clock.advance(1)
        await finish(1)  # the 2nd failure opens it
        opened_at = clock.now
        clock.advance(5)
        await finish(2)
        await finish(3)
    stats = breaker.statistics()
    # pybreaker would re-open it on each late failure, pushing opened_at to now.
    assert (stats.state, stats.opened_at, stats.failures) == (BreakerState.OPEN, opened_at, 2)
    assert transitions(recorder) == [("closed", "open")]


# --- events, statistics, storage ---------------------------------------------------------


async def test_listeners_are_isolated_and_removable(registry: BreakerRegistry) -> None:
    recorder = EventRecorder()

    def broken(event: BreakerStateChanged) -> None:
        raise RuntimeError("listener bug")

    registry.add_listener(broken)
    remove = registry.add_listener(recorder)
    breaker = registry.get("svc", BreakerConfig(failure_threshold=1))
    await fail(breaker, 1)
    assert transitions(recorder) == [("closed", "open")]
    remove()
    breaker.reset()
    assert breaker.state is BreakerState.CLOSED
    assert len(recorder.events) == 1


async def test_statistics_are_a_frozen_snapshot(
    registry: BreakerRegistry, clock: FakeClock
) -> None:
    breaker = registry.get("svc", BreakerConfig(failure_threshold=3))
    await fail(breaker, 1)
    before = breaker.statistics()
    await fail(breaker, 2)
    assert (before.state, before.failures) == (BreakerState.CLOSED, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.failures = 9  # type: ignore[misc]
    assert registry.statistics()["svc"].state is BreakerState.OPEN
    assert registry.statistics()["svc"].opened_at == clock.now


async def test_state_can_be_shared_through_a_storage_factory(clock: FakeClock) -> None:
    """Two registries (as two processes would) sharing storage see one breaker state."""
    shared: dict[str, ClockedMemoryStorage] = {}

    def storage(name: str, clock: Callable[[], float]) -> pybreaker.CircuitBreakerStorage:
        return shared.setdefault(name, ClockedMemoryStorage(clock))

    first = BreakerRegistry(clock=clock, storage=storage)
    second = BreakerRegistry(clock=clock, storage=storage)
    noticed = EventRecorder()
    second.add_listener(noticed)
    config = BreakerConfig(failure_threshold=2, recovery_timeout=30)
    mine, theirs = first.get("svc", config), second.get("svc", config)

    async def ok() -> str:
        return "ok"

    assert await theirs.call(ok) == "ok"
    await fail(mine, 2)
    with pytest.raises(CircuitOpenError) as caught:
        await theirs.call(ok)
    assert caught.value.retry_at == clock.now + 30
    assert transitions(noticed) == [("closed", "open")]


async def test_a_storage_failure_does_not_turn_a_success_into_an_error(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Unreachable(ClockedMemoryStorage):
        def reset_counter(self) -> None:
            raise ConnectionError("breaker storage is down")

    registry = BreakerRegistry(clock=clock, storage=lambda name, clock: Unreachable(clock))

    async def ok() -> str:
        return "ok"

    assert await registry.get("svc").call(ok) == "ok"
    assert "could not record a success" in caplog.text


# --- the decorator ----------------------------------------------------------------------


async def test_with_circuit_breaker(registry: BreakerRegistry) -> None:
    calls = 0

    @with_circuit_breaker("svc", config=BreakerConfig(failure_threshold=2))
    async def flaky(fail: bool) -> str:
        """Docstring kept."""
        nonlocal calls
        calls += 1
        if fail:
            raise ConnectionRefusedError
        return "ok"

    assert flaky.__doc__ == "Docstring kept."
    assert await flaky(False) == "ok"
    for _ in range(2):
        with pytest.raises(ConnectionRefusedError):
            await flaky(True)
    with pytest.raises(CircuitOpenError):
        await flaky(False)
    assert calls == 3
    assert registry.get("svc").state is BreakerState.OPEN

    with pytest.raises(TypeError, match="async"):

        @with_circuit_breaker("svc")
        def not_async() -> None:
            return None


async def test_the_documents_error_handling_example_runs_as_written(
    registry: BreakerRegistry, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The example's RetryConfig sets no base delay; keep the test fast.
    monkeypatch.setattr(retry_module, "DEFAULT_CALL_DELAY", 0.001)
    async with loopback_server() as server, httpx.AsyncClient() as client:

        async def some_external_api_call() -> Any:
            response = await client.get(server.url)
            response.raise_for_status()
            return response.json()

        # --- from the design document, "Error Handling Integration", imports adjusted ---
        from vpsweb_tasks import RetryConfig, RetryStrategy, with_circuit_breaker, with_retry

        # fmt: off
        @with_retry(retry_config=RetryConfig(
            strategy=RetryStrategy.EXPONENTIAL_BACKOFF,
            max_attempts=5
        ))
        @with_circuit_breaker("external_api_service")
        async def external_api_call():  # type: ignore[no-untyped-def]
            # Your external API call here
            response = await some_external_api_call()
            return response
        # fmt: on
        # --- end of the example ---

        server.reply(Reply(503), Reply(503))
        assert await external_api_call() == {"call": 3}
        breaker = registry.get("external_api_service")
        assert breaker.statistics().consecutive_failures == 0

        # A dead service: five attempts, the fifth trips the breaker...
        server.always(Reply(500))
        with pytest.raises(httpx.HTTPStatusError, match="500"):
            await external_api_call()
        assert (server.calls, breaker.state) == (3 + 5, BreakerState.OPEN)
        # ...and then no call reaches it, and with_retry does not spin on the breaker.
        with pytest.raises(CircuitOpenError):
            await external_api_call()
        assert server.calls == 8

        clock.advance(60)
        server.always(Reply(200))
        assert await external_api_call() == {"call": 9}
        assert breaker.state is BreakerState.CLOSED


# --- in the queue -----------------------------------------------------------------------


def _outcomes(executions: list[ExecutionRecord]) -> list[ExecutionOutcome]:
    return [execution.outcome for execution in executions]


async def test_tasks_wait_out_an_open_breaker_and_complete_after_it_closes(
    registry: BreakerRegistry, clock: FakeClock, settings_factory: Callable[..., Settings]
) -> None:
    config = BreakerConfig(failure_threshold=2, recovery_timeout=30, half_open_max_calls=1)
    settings = settings_factory(background_tasks={"max_concurrent_jobs": 3})
    async with (
        loopback_server() as server,
        httpx.AsyncClient() as client,
        TaskManager(settings, clock=clock, breakers=registry) as manager,
    ):
        recorder = EventRecorder()
        manager.events.add_listener(recorder)

        @with_circuit_breaker("provider", config=config)
        async def call_provider() -> Any:
            response = await client.get(server.url)
            response.raise_for_status()
            return response.json()

        @manager.task("translate")
        async def translate(context: TaskContext) -> Any:
            return await call_provider()

        # 1. Three calls fail together; the second failure opens the breaker. Each is an
        #    ordinary failed attempt, retried by its category's policy.
        server.always(Reply(503))
        server.hold()
        contexts = [
            await manager.submit(TaskDefinition(name=f"t{n}", task_type="translate"))
            for n in range(3)
        ]
        await server.wait_for_calls(3)
        server.release()
        failed = await recorder.wait_for(TaskFailed, 3)
        assert {(e.will_retry, e.category) for e in failed} == {
            (True, ErrorCategory.EXTERNAL_SERVICE)
        }
        await recorder.wait_for(TaskRetryScheduled, 3)
        breaker = registry.get("provider")
        opened_at = clock.now
        assert (breaker.state, breaker.statistics().opened_at) == (BreakerState.OPEN, opened_at)
        assert recorder.of(TaskDeferred) == []

        # 2. Their retries come due while it is open: each is deferred to the breaker's
        #    retry time without a call and without spending an attempt.
        clock.advance(1)
        manager.queue.notify()
        deferred = await recorder.wait_for(TaskDeferred, 3)
        assert {e.retry_at for e in deferred} == {opened_at + 30}
        assert server.calls == 3
        for context in contexts:
            record = await manager.get_task(context.task_id)
            assert (record.status, record.attempts, record.run_at.timestamp()) == (
                TaskStatus.RETRYING,
                1,
                opened_at + 30,
            )
        assert await manager.list_tasks(statuses=[TaskStatus.FAILED]) == []

        # 3. Recovery: one trial call gets through (held by the server meanwhile), the other
        #    two are deferred briefly; the trial closes the breaker and all complete.
        server.always(Reply(200))
        server.hold()
        clock.advance(29)
        manager.queue.notify()
        await server.wait_for_calls(4)
        await recorder.wait_for(TaskDeferred, 5)
        assert breaker.state is BreakerState.HALF_OPEN
        server.release()
        await recorder.wait_for(TaskCompleted, 1)
        assert breaker.state is BreakerState.CLOSED
        assert {e.retry_at for e in recorder.of(TaskDeferred)[3:]} == {
            clock.now + config.half_open_retry_after
        }
        clock.advance(config.half_open_retry_after)
        manager.queue.notify()
        records = [await context.wait(timeout=10) for context in contexts]
        assert [(r.status, r.attempts) for r in records] == [(TaskStatus.COMPLETED, 2)] * 3
        assert server.calls == 6
        histories = sorted(
            [_outcomes(await manager.list_executions(c.task_id)) for c in contexts], key=len
        )
        failed_, deferred_, completed = (
            ExecutionOutcome.FAILED,
            ExecutionOutcome.DEFERRED,
            ExecutionOutcome.COMPLETED,
        )
        assert histories == [
            [failed_, deferred_, completed],
            [failed_, deferred_, deferred_, completed],
            [failed_, deferred_, deferred_, completed],
        ]
        # The breaker's state changes reached the manager's event hub.
        changes = await recorder.wait_for(BreakerStateChanged, 3)
        assert [(e.name, e.old_state, e.new_state) for e in changes] == [
            ("provider", "closed", "open"),
            ("provider", "open", "half-open"),
            ("provider", "half-open", "closed"),
        ]


async def test_a_rejection_inside_a_handlers_task_group_defers_the_task(
    registry: BreakerRegistry, clock: FakeClock, settings_factory: Callable[..., Settings]
) -> None:
    breaker = registry.get("svc", BreakerConfig(failure_threshold=1, recovery_timeout=30))
    await fail(breaker, 1)

    async def ok() -> str:
        return "ok"

    async with TaskManager(settings_factory(), clock=clock, breakers=registry) as manager:
        recorder = EventRecorder()
        manager.events.add_listener(recorder)

        @manager.task("fan_out")
        async def fan_out(context: TaskContext) -> list[str]:
            results: list[str] = []

            async def one() -> None:
                results.append(await breaker.call(ok))

            async with anyio.create_task_group() as tg:
                tg.start_soon(one)
                tg.start_soon(one)
            return results

        context = await manager.submit(TaskDefinition(name="fan", task_type="fan_out"))
        [deferred] = await recorder.wait_for(TaskDeferred)
        assert deferred.retry_at == clock.now + 30
        record = await manager.get_task(context.task_id)
        assert (record.status, record.attempts) == (TaskStatus.RETRYING, 0)
        clock.advance(30)
        manager.queue.notify()
        record = await context.wait(timeout=10)
        assert (record.status, record.result, record.attempts) == (
            TaskStatus.COMPLETED,
            ["ok", "ok"],
            1,
        )
