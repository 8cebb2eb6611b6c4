"""Circuit breakers shared through the database: when one worker's breaker opens, every
worker on the database sees it open (and deferred tasks wait there too)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from vpsweb_tasks import TaskContext, TaskDefinition, TaskManager, TaskStatus
from vpsweb_tasks.breakers import BreakerRegistry, BreakerState
from vpsweb_tasks.config import Settings
from vpsweb_tasks.events import BreakerStateChanged

from .conftest import FakeClock

pytestmark = pytest.mark.anyio


async def became(registry: BreakerRegistry, name: str, state: BreakerState) -> None:
    """Wait (on the registry's own events) until the breaker is in ``state``."""
    changed = anyio.Event()

    def listen(event: BreakerStateChanged) -> None:
        if event.name == name and event.new_state == state.value:
            changed.set()

    remove = registry.add_listener(listen)
    try:
        if registry.get(name).state is not state:
            with anyio.fail_after(10):
                await changed.wait()
    finally:
        remove()


async def test_a_breaker_opened_by_one_worker_is_open_for_all(
    settings_factory: Callable[..., Settings],
    storage: dict[str, Any],
    clock: FakeClock,
) -> None:
    settings = settings_factory(storage=storage)
    first, second = BreakerRegistry(clock=clock), BreakerRegistry(clock=clock)
    async with (
        TaskManager(settings, clock=clock, breakers=first),
        TaskManager(settings, clock=clock, breakers=second) as b,
    ):
        calls = 0

        @b.task("call_llm")
        async def call_llm(context: TaskContext) -> str:
            nonlocal calls
            async with second.get("llm").guard():
                calls += 1
                return "translated"

        async def down() -> None:
            raise ConnectionError("provider down")

        breaker = first.get("llm")
        for _ in range(breaker.config.failure_threshold):
            with pytest.raises(ConnectionError):
                await breaker.call(down)
        assert breaker.state is BreakerState.OPEN
        # The other worker adopts it: through NOTIFY on PostgreSQL, its next look at
        # storage (every queue_check_interval) on SQLite.
        await became(second, "llm", BreakerState.OPEN)
        adopted = second.get("llm").statistics()
        assert adopted.retry_at == breaker.statistics().retry_at
        assert adopted.failures == 0  # it never called the provider itself

        context = await b.submit(TaskDefinition(name="t", task_type="call_llm"))
        while (record := await b.get_task(context.task_id)).status is not TaskStatus.RETRYING:
            await b.queue.next_round()
        assert (record.attempts, calls) == (0, 0)  # deferred, not burned
        assert record.run_at.timestamp() == adopted.retry_at

        # The first worker's trial succeeds after the recovery timeout: closed everywhere.
        clock.advance(breaker.config.recovery_timeout)

        async def up() -> None:
            return None

        await breaker.call(up)
        assert breaker.state is BreakerState.CLOSED
        await became(second, "llm", BreakerState.CLOSED)
        b.queue.notify()
        assert (await context.wait(10)).result == "translated"
        assert calls == 1
