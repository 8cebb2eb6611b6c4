"""Concurrent calls of one kind, written in batches: the asynchronous group commit of a
store whose operations run on pooled connections (PostgreSQL).

A :class:`Combiner` has at most one batch in flight. A call that finds none opens one after
a single pass of the event loop, with the calls that arrived meanwhile (callers that the
previous batch answered come back together: without the pass, the first would go alone
and the rest would make the next batch); calls that arrive while a batch is in flight
gather, and the next batch takes them all (up to ``max_batch``), in arrival order, as one
call of ``run_batch``: one round trip and one commit for many. So a lone call waits for
one pass of the loop, and under load a batch is as large as what arrived during one round
trip.

No task runs in the background: the caller whose item opens a batch runs it (shielded: the
other callers' items are in it), then hands the next batch to the first caller still
waiting, and returns. ``run_batch`` returns one result per item, in order; a
:class:`Refused` result is raised to that item's caller alone. If ``run_batch`` raises,
nothing of the batch was written (it runs in one transaction or one statement), and each
item is run again alone, so one item's error (a duplicate id) never fails another's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel

from ._dbthread import Refused

__all__ = ["Combiner", "Refused"]

I = TypeVar("I")  # noqa: E741 (an item)
R = TypeVar("R")


class _Call(Generic[I]):
    __slots__ = ("answered", "error", "item", "lead", "result", "woken")

    def __init__(self, item: I) -> None:
        self.item = item
        self.woken: anyio.Event | None = None  # made only if the call has to wait
        self.answered = False
        self.lead = False  # woken to run the next batch rather than with an answer
        self.result: Any = None
        self.error: BaseException | None = None


class Combiner(Generic[I, R]):
    """Gathers concurrent :meth:`__call__` s into batches; see the module docstring."""

    def __init__(
        self, run_batch: Callable[[list[I]], Awaitable[list[R | Refused]]], *, max_batch: int
    ) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._waiting: list[_Call[I]] = []
        self._busy = False
        self._new_event: Callable[[], anyio.Event] | None = None

    async def __call__(self, item: I) -> R:
        call: _Call[I] = _Call(item)
        self._waiting.append(call)
        opens = not self._busy
        if not opens:
            call.woken = self._event()
            try:
                await call.woken.wait()
            except BaseException:
                # Cancelled before its batch began: its item is not written.
                if call in self._waiting:
                    self._waiting.remove(call)
                if call.lead:  # its turn to run a batch had come
                    self._pass_on()
                raise
            if not call.lead:
                return self._answer(call)
        self._busy = True
        try:
            with anyio.CancelScope(shield=True):
                if opens:
                    await self._gather_ready()
                while not call.answered:  # the batch that holds our own item
                    await self._run_next()
        finally:
            self._pass_on()
        return self._answer(call)

    @staticmethod
    async def _gather_ready() -> None:
        """One pass of the event loop before a batch that no call waited for: the callers
        the previous batch answered (already scheduled, about to call again) join it,
        rather than the first of them going alone and the rest making the next batch."""
        await anyio.lowlevel.checkpoint()

    def _event(self) -> anyio.Event:
        # The loop's backend makes it directly: anyio.Event() looks the backend up each time.
        if self._new_event is None:
            self._new_event = anyio.lowlevel.current_token().backend_class.create_event
        return self._new_event()

    @staticmethod
    def _answer(call: _Call[I]) -> R:
        if call.error is not None:
            raise call.error
        result: R = call.result
        return result

    def _pass_on(self) -> None:
        """Hand the next batch to the first waiting caller, or let the next arrival open it."""
        if self._waiting:
            first = self._waiting[0]
            first.lead = True
            assert first.woken is not None
            first.woken.set()
        else:
            self._busy = False

    async def _run_next(self) -> None:
        batch = self._waiting[: self._max_batch]
        del self._waiting[: self._max_batch]
        try:
            results = await self._run_batch([call.item for call in batch])
        except Exception as exc:
            if len(batch) == 1:
                results = [Refused(exc)]
            else:
                results = [await self._alone(call.item) for call in batch]
        for call, result in zip(batch, results, strict=True):
            if isinstance(result, Refused):
                call.error = result.error
            else:
                call.result = result
            call.answered = True
            call.lead = False
            if call.woken is not None:
                call.woken.set()

    async def _alone(self, item: I) -> R | Refused:
        try:
            (result,) = await self._run_batch([item])
        except Exception as exc:
            return Refused(exc)
        return result
