"""Typed events and the hub that delivers them.

Everything that happens to tasks, the queue and circuit breakers is published as a
frozen, past-tense event. The hub numbers events (``id``, increasing), keeps the latest
ones in a ring so a subscriber can resume after a given id without loss, and delivers:

* to **listeners** (sync or async callables), in order, each in isolation: a listener that
  raises is logged and does not affect the task or other listeners. Sync listeners run
  inline; each async listener has its own ordered queue and task. When an async listener
  falls ``listener_buffer`` events behind, publishers wait for it (nothing is dropped).
* to **subscriptions** (``async with hub.subscribe(after=id) as events``), e.g. the HTTP
  layer's server-sent events. A subscriber that falls ``subscriber_buffer`` events behind
  is disconnected (:class:`SubscriberLagged`) rather than slowing tasks down; it resumes
  with the last id it saw, from the ring.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Self

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .errors import ErrorCategory
from .models import ProgressUpdate, TaskStatus, to_datetime

__all__ = [
    "AlertCleared",
    "AlertRaised",
    "BreakerStateChanged",
    "Event",
    "EventHub",
    "HealthChanged",
    "Listener",
    "QueueCleared",
    "QueuePaused",
    "QueueResumed",
    "SubscriberLagged",
    "TaskCancelled",
    "TaskCompleted",
    "TaskDeadLettered",
    "TaskDeferred",
    "TaskFailed",
    "TaskProgressed",
    "TaskRequeued",
    "TaskRetryScheduled",
    "TaskStarted",
    "TaskSubmitted",
]

logger = logging.getLogger("vpsweb_tasks.events")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of all events. ``id`` is given by the hub when the event is published."""

    kind: ClassVar[str] = "event"
    at: float = field(default_factory=time.time)
    id: int = 0

    @property
    def task_id(self) -> str | None:
        return None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"event": self.kind}
        for name in self.__dataclass_fields__:
            data[name] = getattr(self, name)
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class _TaskEvent(Event):
    task: str = ""
    task_type: str = ""

    @property
    def task_id(self) -> str | None:
        return self.task

    def to_dict(self) -> dict[str, Any]:
        data = Event.to_dict(self)
        data["task_id"] = data.pop("task")
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSubmitted(_TaskEvent):
    kind: ClassVar[str] = "task_submitted"
    priority: str = "normal"


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskStarted(_TaskEvent):
    kind: ClassVar[str] = "task_started"
    attempt: int = 1
    worker_id: str = ""
    queue_wait: float | None = None
    """Seconds from the task's run time (submit, delay or retry time) to this start."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskProgressed(_TaskEvent):
    """A running task reported progress (at ``at``). The report's fields are kept as
    they came; :attr:`update` is built from them when read, since with many tasks
    running most reports are never read (a model per report cost more than the rest)."""

    kind: ClassVar[str] = "task_progressed"
    progress: float = 0.0
    message: str | None = None
    status: TaskStatus = TaskStatus.RUNNING
    metadata: dict[str, Any] | None = None

    @property
    def update(self) -> ProgressUpdate:
        """The report as listeners receive it."""
        return ProgressUpdate.model_construct(
            task_id=self.task,
            progress=self.progress,
            message=self.message,
            status=self.status,
            timestamp=to_datetime(self.at),
            metadata=dict(self.metadata) if self.metadata else {},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": self.kind,
            "at": self.at,
            "id": self.id,
            "task_id": self.task,
            "task_type": self.task_type,
            "update": self.update.model_dump(mode="json"),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskCompleted(_TaskEvent):
    kind: ClassVar[str] = "task_completed"
    attempt: int = 1
    duration: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFailed(_TaskEvent):
    """An attempt failed. ``will_retry`` tells whether a TaskRetryScheduled follows."""

    kind: ClassVar[str] = "task_failed"
    attempt: int = 1
    error_type: str = ""
    error_message: str = ""
    category: ErrorCategory = ErrorCategory.UNKNOWN
    will_retry: bool = False
    duration: float | None = None
    """Seconds the attempt ran, from its claim to its outcome's write."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRetryScheduled(_TaskEvent):
    kind: ClassVar[str] = "task_retry_scheduled"
    attempt: int = 1
    retry_at: float = 0.0
    category: ErrorCategory = ErrorCategory.UNKNOWN


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskDeadLettered(_TaskEvent):
    """Retries exhausted or not retryable: the task is ``failed``."""

    kind: ClassVar[str] = "task_dead_lettered"
    category: ErrorCategory = ErrorCategory.UNKNOWN
    error_message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskDeferred(_TaskEvent):
    kind: ClassVar[str] = "task_deferred"
    retry_at: float = 0.0
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskCancelled(_TaskEvent):
    kind: ClassVar[str] = "task_cancelled"


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRequeued(_TaskEvent):
    """A task went back to pending: requeued from the dead letter queue, or released on
    shutdown."""

    kind: ClassVar[str] = "task_requeued"
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuePaused(Event):
    kind: ClassVar[str] = "queue_paused"
    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueResumed(Event):
    kind: ClassVar[str] = "queue_resumed"


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueCleared(Event):
    kind: ClassVar[str] = "queue_cleared"
    cancelled: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerStateChanged(Event):
    """A circuit breaker moved between ``closed``, ``open`` and ``half-open``."""

    kind: ClassVar[str] = "breaker_state_changed"
    name: str = ""
    old_state: str = ""
    new_state: str = ""
    retry_at: float | None = None
    """When opened: epoch seconds from which a trial call is allowed."""
    shared: bool = False
    """True when the change was adopted from another worker (through storage) rather than
    caused by this process's own calls."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertRaised(Event):
    """An alert started, or changed level."""

    kind: ClassVar[str] = "alert_raised"
    name: str = ""
    level: str = "warning"
    message: str = ""
    value: float | None = None
    threshold: float | None = None
    since: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertCleared(Event):
    kind: ClassVar[str] = "alert_cleared"
    name: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthChanged(Event):
    kind: ClassVar[str] = "health_changed"
    old_status: str = ""
    new_status: str = ""


Listener = Callable[[Any], Awaitable[None] | None]


class SubscriberLagged(Exception):
    """A subscription fell too far behind and was closed; resume after ``last_id``."""

    def __init__(self, last_id: int) -> None:
        super().__init__(f"subscriber fell behind; resume after event {last_id}")
        self.last_id = last_id


@dataclass(eq=False)
class _Listener:
    fn: Listener
    task_id: str | None
    kinds: frozenset[str] | None
    send: MemoryObjectSendStream[Event] | None = None
    is_async: bool = field(init=False)

    def __post_init__(self) -> None:
        self.is_async = _is_async(self.fn)  # asked on every event; inspect is not cheap

    def wants(self, event: Event) -> bool:
        if self.task_id is not None and event.task_id != self.task_id:
            return False
        return self.kinds is None or event.kind in self.kinds


class _Subscription:
    def __init__(self, buffer: int) -> None:
        self.send, self.receive = anyio.create_memory_object_stream[Event](buffer)
        self.lagged = False
        self.last_id = 0


class EventHub:
    """Numbers, keeps and delivers events; see the module docstring."""

    def __init__(
        self,
        *,
        history: int = 10_000,
        listener_buffer: int = 1000,
        subscriber_buffer: int = 10_000,
    ) -> None:
        self._ids = itertools.count(1)
        self._ring: deque[Event] = deque(maxlen=history)
        self._listeners: list[_Listener] = []
        self._subscriptions: set[_Subscription] = set()
        self._listener_buffer = listener_buffer
        self._subscriber_buffer = subscriber_buffer
        self._tg: TaskGroup | None = None
        self.last_id = 0

    async def __aenter__(self) -> Self:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        for listener in self._listeners:
            self._start_async(listener)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        # Let async listeners drain what they were given, then stop.
        for listener in self._listeners:
            if listener.send is not None:
                listener.send.close()
                listener.send = None
        for subscription in list(self._subscriptions):
            subscription.send.close()
        tg, self._tg = self._tg, None
        assert tg is not None
        return await tg.__aexit__(exc_type, exc, tb)

    # --- listeners -----------------------------------------------------------------------

    def add_listener(
        self,
        fn: Listener,
        *,
        task_id: str | None = None,
        kinds: set[str] | frozenset[str] | None = None,
    ) -> Callable[[], None]:
        """Call ``fn(event)`` for each event (of ``task_id``, of ``kinds``); returns a
        function that removes the listener."""
        listener = _Listener(fn, task_id, None if kinds is None else frozenset(kinds))
        self._listeners.append(listener)
        if self._tg is not None:
            self._start_async(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)
            if listener.send is not None:
                listener.send.close()
                listener.send = None

        return remove

    def _start_async(self, listener: _Listener) -> None:
        if not listener.is_async or listener.send is not None or self._tg is None:
            return
        send, receive = anyio.create_memory_object_stream[Event](self._listener_buffer)
        listener.send = send
        self._tg.start_soon(self._drain, listener.fn, receive)

    @staticmethod
    async def _drain(fn: Listener, receive: MemoryObjectReceiveStream[Event]) -> None:
        async with receive:
            async for event in receive:
                try:
                    outcome = fn(event)
                    if inspect.isawaitable(outcome):
                        await outcome
                except Exception:
                    logger.exception("event listener %r failed on %s", fn, event.kind)

    # --- publishing ----------------------------------------------------------------------

    async def publish(self, event: Event) -> Event:
        """Number the event, keep it, and deliver it. Returns the numbered event."""
        numbered = _with_id(event, next(self._ids))
        self.last_id = numbered.id
        self._ring.append(numbered)
        for listener in list(self._listeners):
            if not listener.wants(numbered):
                continue
            if listener.send is not None:
                with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                    await listener.send.send(numbered)
            elif not listener.is_async:
                try:
                    listener.fn(numbered)
                except Exception:
                    logger.exception("event listener %r failed on %s", listener.fn, numbered.kind)
            else:  # an async listener while the hub is not running: await it here
                try:
                    outcome = listener.fn(numbered)
                    if inspect.isawaitable(outcome):
                        await outcome
                except Exception:
                    logger.exception("event listener %r failed on %s", listener.fn, numbered.kind)
        for subscription in list(self._subscriptions):
            if subscription.lagged:
                continue
            try:
                subscription.send.send_nowait(numbered)
            except anyio.WouldBlock:
                subscription.lagged = True
                subscription.send.close()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._subscriptions.discard(subscription)
        return numbered

    def recent(self, *, after: int = 0, limit: int | None = None) -> list[Event]:
        """Kept events with ``id > after``, oldest first."""
        events = [event for event in self._ring if event.id > after]
        return events if limit is None else events[-limit:]

    @property
    def oldest_id(self) -> int:
        return self._ring[0].id if self._ring else self.last_id + 1

    def can_resume(self, after: int) -> bool:
        """Whether every event with ``id > after`` is still kept: ``after`` is neither older
        than the ring nor newer than any event (an id of an earlier run of this process:
        ids restart with it). :meth:`subscribe` raises :class:`SubscriberLagged` otherwise."""
        return self.oldest_id - 1 <= after <= self.last_id

    @asynccontextmanager
    async def subscribe(self, *, after: int | None = None) -> AsyncIterator[AsyncIterator[Event]]:
        """Iterate over events with ``id > after`` (None: only new ones), live.

        Raises :class:`SubscriberLagged` from the iterator if events were lost, either
        because ``after`` is older than the ring (or newer than any event: an id from before
        a restart) or because the subscriber fell behind.
        """
        subscription = _Subscription(self._subscriber_buffer)
        self._subscriptions.add(subscription)
        backlog: list[Event] = []
        if after is not None:
            if not self.can_resume(after):
                self._subscriptions.discard(subscription)
                subscription.send.close()
                subscription.receive.close()
                raise SubscriberLagged(after)
            backlog = self.recent(after=after)
            subscription.last_id = after

        async def iterate() -> AsyncIterator[Event]:
            for event in backlog:
                subscription.last_id = event.id
                yield event
            async with subscription.receive:
                while True:
                    try:
                        event = await subscription.receive.receive()
                    except anyio.EndOfStream:
                        if subscription.lagged:
                            raise SubscriberLagged(subscription.last_id) from None
                        return
                    if event.id <= subscription.last_id:
                        continue  # already delivered from the backlog
                    subscription.last_id = event.id
                    yield event

        try:
            yield iterate()
        finally:
            self._subscriptions.discard(subscription)
            subscription.send.close()
            subscription.receive.close()


def _is_async(fn: Callable[..., Any]) -> bool:
    call = getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


def _with_id(event: Event, event_id: int) -> Event:
    # Events are frozen for their readers; the hub numbers each once, on publication,
    # in place (a copy per event cost more than the rest of publishing it).
    object.__setattr__(event, "id", event_id)
    return event
