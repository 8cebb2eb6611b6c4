"""Retry strategies, the retry policy (durable task retries) and with_retry (in-call)."""

from __future__ import annotations

import math
import random
import sqlite3
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vpsweb_tasks import (
    CircuitOpenError,
    ErrorCategory,
    Retry,
    RetryConfig,
    RetryPolicy,
    RetryStrategy,
    TaskContext,
    TaskDefinition,
    TaskManager,
    TaskStatus,
    with_retry,
)
from vpsweb_tasks.config import Settings
from vpsweb_tasks.events import TaskFailed, TaskRetryScheduled
from vpsweb_tasks.models import ExecutionOutcome
from vpsweb_tasks.retry import DEFAULT_CATEGORY_RETRY
from vpsweb_tasks.translation.errors import CostCapExceededError

from .conftest import FakeClock
from .support import EventRecorder, Reply, closed_port, loopback_server

pytestmark = pytest.mark.anyio

NOW = 1_800_000_000.0


def status_error(status: int, headers: dict[str, str] | None = None) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://provider.test/")
    response = httpx.Response(status, headers=headers or {}, request=request)
    return httpx.HTTPStatusError(f"HTTP {status}", request=request, response=response)


EXAMPLES: dict[ErrorCategory, Callable[[], BaseException]] = {
    ErrorCategory.NETWORK: ConnectionResetError,
    ErrorCategory.DATABASE: lambda: sqlite3.OperationalError("database is locked"),
    ErrorCategory.EXTERNAL_SERVICE: lambda: status_error(502),
    ErrorCategory.TIMEOUT: TimeoutError,
    ErrorCategory.VALIDATION: lambda: ValueError("bad input"),
    ErrorCategory.PERMISSION: PermissionError,
    ErrorCategory.RESOURCE: MemoryError,
    ErrorCategory.UNKNOWN: lambda: RuntimeError("?"),
    ErrorCategory.BUDGET: lambda: CostCapExceededError(
        step="editor_review", spent=0.5, estimate=0.7, cap=1.0, currency="USD"
    ),
}


# --- delays -----------------------------------------------------------------------------


def _exponential_cap(base: float, multiplier: float, n: int, max_delay: float) -> float:
    try:
        return min(max_delay, base * multiplier**n)
    except OverflowError:
        return max_delay


@given(
    strategy=st.sampled_from(RetryStrategy),
    retry=st.integers(0, 99),
    base=st.floats(0, 3600),
    multiplier=st.floats(1, 1e6),
    max_delay=st.floats(0.001, 86400),
    jitter=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_every_delay_stays_within_its_strategys_bounds(
    strategy: RetryStrategy,
    retry: int,
    base: float,
    multiplier: float,
    max_delay: float,
    jitter: bool,
    seed: int,
) -> None:
    config = RetryConfig(
        strategy=strategy,
        base_delay=base,
        multiplier=multiplier,
        max_delay=max_delay,
        jitter=jitter,
    )
    for delay in (config.delay(retry, rng=random.Random(seed)), config.delay(retry)):
        assert math.isfinite(delay)
        match strategy:
            case RetryStrategy.EXPONENTIAL_BACKOFF:
                cap = _exponential_cap(base, multiplier, retry, max_delay)
                if jitter:  # full jitter: uniform in [0, cap]
                    assert 0.0 <= delay <= cap
                else:
                    assert math.isclose(delay, cap)
            case RetryStrategy.LINEAR_BACKOFF:
                assert math.isclose(delay, min(max_delay, base * (retry + 1)))
            case RetryStrategy.FIXED_INTERVAL:
                assert math.isclose(delay, min(max_delay, base))
            case RetryStrategy.IMMEDIATE | RetryStrategy.NO_RETRY:
                assert delay == 0.0


def test_the_base_delay_falls_back_to_the_callers_default() -> None:
    config = RetryConfig(strategy=RetryStrategy.LINEAR_BACKOFF)
    assert [config.delay(n, base_delay=60.0) for n in range(3)] == [60.0, 120.0, 180.0]
    exponential = RetryConfig(jitter=False, max_delay=500)
    assert [exponential.delay(n, base_delay=60.0) for n in range(5)] == [
        60.0,
        120.0,
        240.0,
        480.0,
        500.0,
    ]
    with pytest.raises(ValueError, match=">= 0"):
        config.delay(-1)


def test_retry_config_is_validated_and_frozen() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryConfig(max_attempts=0)
    with pytest.raises(ValueError, match="extra"):
        RetryConfig(max_retries=3)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="frozen"):
        RetryConfig().max_attempts = 9  # type: ignore[misc]


# --- the policy -------------------------------------------------------------------------

configs = st.builds(
    RetryConfig,
    strategy=st.sampled_from(RetryStrategy),
    max_attempts=st.integers(1, 12),
    base_delay=st.none() | st.floats(0, 100),
)


@given(
    category=st.sampled_from(ErrorCategory),
    max_retries=st.integers(0, 12),
    max_retry_attempts=st.integers(0, 12),
    task_config=st.none() | configs,
    type_config=st.none() | configs,
    base_delay=st.floats(0, 1000),
)
def test_attempts_never_exceed_any_of_the_caps(
    category: ErrorCategory,
    max_retries: int,
    max_retry_attempts: int,
    task_config: RetryConfig | None,
    type_config: RetryConfig | None,
    base_delay: float,
) -> None:
    policy = RetryPolicy(
        base_delay=base_delay,
        max_retry_attempts=max_retry_attempts,
        task_types={"work": type_config} if type_config else None,
        rng=random.Random(0),
    )
    error = EXAMPLES[category]()
    attempts, now = 0, NOW
    while True:
        attempts += 1
        decision = policy.decide(
            error,
            attempts=attempts,
            max_retries=max_retries,
            now=now,
            task_type="work",
            task_config=task_config,
        )
        assert decision.category is category
        if decision.retry_at is None:
            break
        assert decision.retry_at >= now
        now = decision.retry_at
        assert attempts <= 100, "never gives up"

    category_default = DEFAULT_CATEGORY_RETRY[category]
    bound = min(max_retries + 1, category_default.max_attempts, max_retry_attempts + 1)
    assert attempts <= bound
    # And it does not give up early: the smallest cap is reached.
    chosen = task_config or type_config or category_default
    if RetryStrategy.NO_RETRY in (chosen.strategy, category_default.strategy):
        assert attempts == 1
    else:
        assert attempts == min(bound, chosen.max_attempts)


def test_the_task_config_beats_the_type_config_beats_the_category() -> None:
    fixed = RetryConfig(strategy=RetryStrategy.FIXED_INTERVAL, base_delay=5)
    linear = RetryConfig(strategy=RetryStrategy.LINEAR_BACKOFF, base_delay=3)
    policy = RetryPolicy(base_delay=60, max_retry_attempts=5, task_types={"work": fixed})
    error = ConnectionResetError()

    def delay(**kwargs: Any) -> float | None:
        decision = policy.decide(error, attempts=2, max_retries=5, now=NOW, **kwargs)
        return decision.delay

    assert delay(task_type="work") == 5.0
    assert delay(task_type="work", task_config=linear) == 6.0
    resource = policy.decide(MemoryError(), attempts=1, max_retries=5, now=NOW)
    assert resource.delay == 60.0  # the category's fixed interval on the queue's base


def test_a_retry_request_is_capped_only_by_max_retries() -> None:
    policy = RetryPolicy(base_delay=60, max_retry_attempts=10)
    decision = policy.decide(Retry(delay=42), attempts=4, max_retries=5, now=NOW)
    assert (decision.retry_at, decision.delay) == (NOW + 42, 42.0)  # beyond 'unknown's 3
    assert policy.decide(Retry(delay=1), attempts=6, max_retries=5, now=NOW).retry_at is None
    in_group = ExceptionGroup("handler", [Retry(delay=7)])
    assert policy.decide(in_group, attempts=1, max_retries=1, now=NOW).retry_at == NOW + 7
    with pytest.raises(ValueError, match=">= 0"):
        Retry(delay=-1)


def test_a_lost_attempt_runs_again_at_once_then_after_a_doubling_delay() -> None:
    policy = RetryPolicy(base_delay=60, max_retry_attempts=0, rng=random.Random(1))
    delays = [policy.lost_attempt_delay(lost) for lost in range(1, 8)]
    assert delays == [0.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0]  # no jitter
    assert policy.lost_attempt_delay(30) == 3600.0  # capped at the default max_delay
    assert RetryPolicy(base_delay=0).lost_attempt_delay(3) == 0.0


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_a_minimum_delay(status: int) -> None:
    policy = RetryPolicy(base_delay=0.5, max_retry_attempts=5, rng=random.Random(1))
    seconds = status_error(status, {"Retry-After": "120"})
    assert policy.decide(seconds, attempts=1, max_retries=5, now=NOW).delay == 120.0
    date = status_error(status, {"Retry-After": formatdate(NOW + 300, usegmt=True)})
    assert policy.decide(date, attempts=1, max_retries=5, now=NOW).retry_at == NOW + 300
    # A hint shorter than the strategy's delay does not shorten it.
    slow = RetryPolicy(base_delay=1000, max_retry_attempts=5)
    short = status_error(status, {"Retry-After": "1"})
    config = RetryConfig(strategy=RetryStrategy.FIXED_INTERVAL)
    decision = slow.decide(short, attempts=1, max_retries=5, now=NOW, task_config=config)
    assert decision.delay == 1000.0


# --- with_retry against a real server -----------------------------------------------------


async def test_with_retry_retries_by_its_config_until_success() -> None:
    config = RetryConfig(strategy=RetryStrategy.FIXED_INTERVAL, max_attempts=3, base_delay=0.001)
    async with loopback_server() as server, httpx.AsyncClient() as client:
        server.reply(Reply(503), Reply(502))

        @with_retry(retry_config=config)
        async def fetch() -> Any:
            response = await client.get(server.url)
            response.raise_for_status()
            return response.json()

        assert await fetch() == {"call": 3}
        assert server.calls == 3

        server.always(Reply(500))
        with pytest.raises(httpx.HTTPStatusError, match="500"):
            await fetch()
        assert server.calls == 3 + 3


async def test_with_retry_without_a_config_follows_the_category() -> None:
    async with loopback_server() as server, httpx.AsyncClient() as client:
        server.always(Reply(500))

        @with_retry(base_delay=0.001)
        async def fetch(url: str) -> Any:
            response = await client.get(url)
            response.raise_for_status()
            return response.json()

        with pytest.raises(httpx.HTTPStatusError):
            await fetch(server.url)
        assert server.calls == DEFAULT_CATEGORY_RETRY[ErrorCategory.EXTERNAL_SERVICE].max_attempts

        tries = 0

        @with_retry(base_delay=0.001)
        async def connect(url: str) -> None:
            nonlocal tries
            tries += 1
            await client.get(url)

        with pytest.raises(httpx.ConnectError):
            await connect(f"http://127.0.0.1:{await closed_port()}/")
        assert tries == DEFAULT_CATEGORY_RETRY[ErrorCategory.NETWORK].max_attempts == 3


@pytest.mark.parametrize(("status", "config"), [(401, True), (403, False), (422, True)])
async def test_with_retry_gives_up_at_once_on_permission_and_validation(
    status: int, config: bool
) -> None:
    retry_config = RetryConfig(max_attempts=5, base_delay=0.001) if config else None
    async with loopback_server() as server, httpx.AsyncClient() as client:
        server.always(Reply(status))

        @with_retry(retry_config, base_delay=0.001)
        async def fetch() -> None:
            (await client.get(server.url)).raise_for_status()

        with pytest.raises(httpx.HTTPStatusError, match=str(status)):
            await fetch()
        assert server.calls == 1


async def test_with_retry_honours_retry_after() -> None:
    config = RetryConfig(strategy=RetryStrategy.IMMEDIATE, max_attempts=3)
    async with loopback_server() as server, httpx.AsyncClient() as client:
        server.reply(Reply(429, {"Retry-After": "1"}))

        @with_retry(retry_config=config)
        async def fetch() -> Any:
            response = await client.get(server.url)
            response.raise_for_status()
            return response.json()

        started = anyio.current_time()
        assert await fetch() == {"call": 2}
        assert anyio.current_time() - started >= 0.99  # immediate, but the server said 1 s


async def test_with_retry_leaves_breaker_rejections_to_the_queue() -> None:
    calls = 0

    @with_retry(RetryConfig(max_attempts=5, base_delay=0.001))
    async def guarded() -> None:
        nonlocal calls
        calls += 1
        raise CircuitOpenError("provider", retry_at=NOW)

    with pytest.raises(CircuitOpenError):
        await guarded()
    assert calls == 1


# --- durable retries in the queue -------------------------------------------------------


def definition(task_type: str = "work", **fields: Any) -> TaskDefinition:
    return TaskDefinition(name=fields.pop("name", task_type), task_type=task_type, **fields)


async def retried(recorder: EventRecorder, task_id: str, count: int) -> float:
    """Wait for the ``count``-th retry of the task; return when it is due."""
    events = await recorder.wait_for(TaskRetryScheduled, count, task=task_id)
    return float(events[-1].retry_at)


async def test_a_task_types_and_a_tasks_own_retry_config(
    settings_factory: Callable[..., Settings], clock: FakeClock
) -> None:
    fixed = RetryConfig(strategy=RetryStrategy.FIXED_INTERVAL, base_delay=5, max_attempts=2)
    linear = RetryConfig(strategy=RetryStrategy.LINEAR_BACKOFF, base_delay=3, max_attempts=9)
    async with TaskManager(settings_factory(), clock=clock) as manager:
        recorder = EventRecorder()
        manager.events.add_listener(recorder)

        async def refused(context: TaskContext) -> None:
            raise ConnectionRefusedError(f"attempt {context.attempt}")

        manager.register("fetch", refused, retry=fixed)
        by_type = await manager.submit(definition("fetch", max_retries=5))
        by_task = await manager.submit(definition("fetch", max_retries=5, retry=linear))

        assert await retried(recorder, by_type.task_id, 1) == clock.now + 5
        assert await retried(recorder, by_task.task_id, 1) == clock.now + 3
        clock.advance(5)
        manager.queue.notify()
        record = await by_type.wait(timeout=10)
        assert (record.status, record.attempts) == (TaskStatus.FAILED, 2)  # its type's cap
        assert await retried(recorder, by_task.task_id, 2) == clock.now + 6
        clock.advance(6)
        manager.queue.notify()
        record = await by_task.wait(timeout=10)
        # Its own config allows 9 attempts, but a network error gets at most 3.
        assert (record.status, record.attempts) == (TaskStatus.FAILED, 3)
        executions = await manager.list_executions(by_task.task_id)
        assert [e.error_message for e in executions] == [f"attempt {n}" for n in (1, 2, 3)]


async def test_a_validation_error_is_not_retried_whatever_the_task_says(
    manager: TaskManager,
) -> None:
    @manager.task("strict")
    async def strict(context: TaskContext) -> None:
        raise PermissionError("not allowed")

    generous = RetryConfig(strategy=RetryStrategy.IMMEDIATE, max_attempts=10)
    context = await manager.submit(definition("strict", max_retries=9, retry=generous))
    record = await context.wait(timeout=10)
    assert (record.status, record.attempts, record.error_category) == (
        TaskStatus.FAILED,
        1,
        ErrorCategory.PERMISSION,
    )


@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_the_queue_waits_as_long_as_the_servers_retry_after(
    settings_factory: Callable[..., Settings], clock: FakeClock, form: str
) -> None:
    async with (
        loopback_server() as server,
        httpx.AsyncClient() as client,
        TaskManager(settings_factory(), clock=clock) as manager,
    ):
        recorder = EventRecorder()
        manager.events.add_listener(recorder)
        wait = 120 if form == "seconds" else 300
        header = str(wait) if form == "seconds" else formatdate(clock.now + wait, usegmt=True)
        server.reply(Reply(429 if form == "seconds" else 503, {"Retry-After": header}))

        @manager.task("fetch")
        async def fetch(context: TaskContext) -> Any:
            response = await client.get(server.url)
            response.raise_for_status()
            return response.json()

        context = await manager.submit(definition("fetch"))
        assert await retried(recorder, context.task_id, 1) == clock.now + wait
        record = await manager.get_task(context.task_id)
        assert (record.status, record.error_category) == (
            TaskStatus.RETRYING,
            ErrorCategory.EXTERNAL_SERVICE,
        )
        clock.advance(wait - 1)
        await manager.queue.next_round()
        assert server.calls == 1  # not due yet
        clock.advance(1)
        manager.queue.notify()
        record = await context.wait(timeout=10)
        assert (record.status, record.result, record.attempts) == (
            TaskStatus.COMPLETED,
            {"call": 2},
            2,
        )


async def test_raise_retry_asks_for_a_delay_within_max_retries(
    settings_factory: Callable[..., Settings], clock: FakeClock
) -> None:
    settings = settings_factory(background_tasks={"max_retry_attempts": 10})
    async with TaskManager(settings, clock=clock) as manager:
        recorder = EventRecorder()
        manager.events.add_listener(recorder)

        @manager.task("poll")
        async def poll(context: TaskContext) -> None:
            raise Retry(delay=42, message=f"not ready ({context.attempt})")

        context = await manager.submit(definition("poll", max_retries=4))
        for n in range(1, 5):  # more than 'unknown' errors would get (3 attempts)
            assert await retried(recorder, context.task_id, n) == clock.now + 42
            clock.advance(42)
            manager.queue.notify()
        record = await context.wait(timeout=10)
        assert (record.status, record.attempts) == (TaskStatus.FAILED, 5)
        [*_, last] = recorder.of(TaskFailed, task=context.task_id)
        assert (last.error_type, last.error_message, last.will_retry) == (
            "Retry",
            "not ready (5)",
            False,
        )
        executions = await manager.list_executions(context.task_id)
        assert [e.outcome for e in executions] == [ExecutionOutcome.FAILED] * 5
