"""The event hub: ordered delivery, isolation of failing listeners, resumable streams."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from vpsweb_tasks.events import EventHub, QueuePaused, SubscriberLagged, TaskStarted

pytestmark = pytest.mark.anyio


async def test_events_are_numbered_and_delivered_in_order() -> None:
    seen: list[int] = []
    got: list[int] = []
    done = anyio.Event()

    async def slow_listener(event: TaskStarted) -> None:
        await anyio.lowlevel.checkpoint()
        got.append(event.attempt)
        if len(got) == 100:
            done.set()

    async with EventHub() as hub:
        hub.add_listener(lambda e: seen.append(e.id))
        hub.add_listener(slow_listener)
        for attempt in range(100):
            await hub.publish(TaskStarted(task="t", attempt=attempt))
        await done.wait()
    assert seen == list(range(1, 101))
    assert got == list(range(100))


async def test_a_failing_listener_does_not_affect_others() -> None:
    delivered: list[str] = []

    def broken(event: object) -> None:
        raise RuntimeError("listener bug")

    async with EventHub() as hub:
        hub.add_listener(broken)
        hub.add_listener(lambda e: delivered.append(e.kind))
        await hub.publish(QueuePaused(reason="x"))
        await hub.publish(QueuePaused(reason="y"))
    assert delivered == ["queue_paused", "queue_paused"]


async def test_listeners_filter_by_task_and_kind() -> None:
    seen: list[str] = []
    async with EventHub() as hub:
        hub.add_listener(lambda e: seen.append(e.task_id), task_id="a", kinds={"task_started"})
        await hub.publish(TaskStarted(task="a"))
        await hub.publish(TaskStarted(task="b"))
        await hub.publish(QueuePaused())
    assert seen == ["a"]


async def test_a_subscription_resumes_after_an_id_without_loss() -> None:
    async with EventHub() as hub:
        for i in range(5):
            await hub.publish(TaskStarted(task=str(i)))
        received: list[str | None] = []
        async with hub.subscribe(after=2) as events:
            await hub.publish(TaskStarted(task="5"))
            async for event in events:
                received.append(event.task_id)
                if event.task_id == "5":
                    break
    assert received == ["2", "3", "4", "5"]


async def test_a_subscriber_that_falls_behind_is_told_where_to_resume() -> None:
    hub = EventHub(subscriber_buffer=3, history=100)
    async with hub:
        async with hub.subscribe() as events:
            for i in range(10):
                await hub.publish(TaskStarted(task=str(i)))
            with pytest.raises(SubscriberLagged) as lagged:
                async for _ in events:
                    pass
        assert lagged.value.last_id == 3
        async with hub.subscribe(after=lagged.value.last_id) as events:
            rest = []
            async for event in events:
                rest.append(event.id)
                if event.id == 10:
                    break
    assert rest == list(range(4, 11))


async def test_resuming_from_before_the_kept_history_is_refused() -> None:
    hub = EventHub(history=5)
    async with hub:
        for i in range(20):
            await hub.publish(TaskStarted(task=str(i)))
        with pytest.raises(SubscriberLagged):
            async with hub.subscribe(after=3):
                pass


async def test_resuming_from_an_id_of_before_a_restart_is_refused() -> None:
    """Ids restart with the process: a client that saw event 500 of the last run must be
    told to reload, not be given events from 501 on of this one."""
    hub = EventHub()
    async with hub:
        for i in range(3):
            await hub.publish(TaskStarted(task=str(i)))
        with pytest.raises(SubscriberLagged) as lagged:
            async with hub.subscribe(after=500):
                pass
        assert lagged.value.last_id == 500
        async with hub.subscribe(after=3) as events:  # the newest id itself is fine
            await hub.publish(TaskStarted(task="next"))
            async for event in events:
                assert event.id == 4
                break
