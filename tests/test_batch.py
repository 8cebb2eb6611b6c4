"""The combiner that writes concurrent calls in batches (storage/_batch.py)."""

from __future__ import annotations

import anyio
import pytest

from vpsweb_tasks.storage._batch import Combiner, Refused

pytestmark = pytest.mark.anyio


class Recorder:
    """A batch function that records each batch and waits for a gate before answering."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = anyio.Event()

    async def __call__(self, items: list[int]) -> list[int | Refused]:
        self.batches.append(items)
        await self.gate.wait()
        if len(items) > 1 and 13 in items:
            raise ValueError("a bad item fails the batch")
        return [Refused(KeyError(i)) if i == 13 else i * 10 for i in items]


async def test_calls_that_arrive_during_a_batch_go_together_in_order() -> None:
    recorder = Recorder()
    combine = Combiner(recorder, max_batch=3)
    results: dict[int, int] = {}

    async def call(i: int) -> None:
        results[i] = await combine(i)

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(call, i)
        await anyio.wait_all_tasks_blocked()
        recorder.gate.set()
    # The first opens a batch after one pass of the loop: the others, started with it, join.
    assert recorder.batches == [[0, 1, 2], [3, 4, 5]]
    assert results == {i: i * 10 for i in range(6)}


async def test_a_failed_batch_is_run_again_item_by_item() -> None:
    recorder = Recorder()
    combine = Combiner(recorder, max_batch=10)
    results: dict[int, object] = {}

    async def call(i: int) -> None:
        try:
            results[i] = await combine(i)
        except KeyError as exc:
            results[i] = exc

    async with anyio.create_task_group() as tg:
        for i in (1, 2, 13, 3):
            tg.start_soon(call, i)
        await anyio.wait_all_tasks_blocked()
        recorder.gate.set()
    assert recorder.batches == [[1, 2, 13, 3], [1], [2], [13], [3]]
    assert isinstance(results.pop(13), KeyError)
    assert results == {1: 10, 2: 20, 3: 30}


async def test_a_call_cancelled_while_it_waits_is_not_written_and_others_go_on() -> None:
    recorder = Recorder()
    combine = Combiner(recorder, max_batch=10)
    results: dict[int, int] = {}

    async def call(i: int) -> None:
        results[i] = await combine(i)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, 0)  # runs the first batch
        await anyio.wait_all_tasks_blocked()
        async with anyio.create_task_group() as doomed:
            doomed.start_soon(call, 1)  # first in line: would run the next batch
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(call, 2)
            await anyio.wait_all_tasks_blocked()
            doomed.cancel_scope.cancel()
        recorder.gate.set()
    assert recorder.batches == [[0], [2]]
    assert results == {0: 0, 2: 20}
