"""TaskManager: the public face of the queue.

::

    async with TaskManager(load_config()) as manager:
        @manager.task("resize_image")
        async def resize(context):
            await context.update_progress(0.5, "halfway")
            return {"ok": True}

        context = await manager.submit(TaskDefinition(name="Resize", task_type="resize_image"))
        record = await context.wait()

``create_task`` returns at once and stores the task in the background; ``submit`` returns
once the task is durably committed. A task is either of a *registered type* (any worker
process can run it, and it resumes after a restart) or an unregistered callable (a
closure): it runs in this process only and, should the process die, is failed with
``HandlerUnavailableError`` on restart rather than lost.

The manager knows no application: an :class:`Extension` brings an application's task
types, tables, config sections and routes (docs/extending.md).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import json
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Collection, Mapping, Sequence
from contextlib import AsyncExitStack, aclosing
from datetime import timedelta
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

import anyio
import anyio.abc
from pydantic import BaseModel, TypeAdapter, ValidationError

from .breakers import BreakerRegistry, get_breaker_registry
from .builtin import builtin_tasks
from .collector import tune_garbage_collector
from .config import RateLimitSettings, Settings, load_config
from .context import AnyTaskFunction, Contexts, TaskContext, TaskFunction
from .errors import (
    ConfigError,
    DuplicateScheduleError,
    ErrorCategory,
    HandlerUnavailableError,
    InvalidScheduleError,
    ManagerNotRunningError,
    RateLimitKeyError,
    ScheduleNotFoundError,
    TaskNotFoundError,
    TaskStateError,
    UnknownQueueError,
    UnknownTaskTypeError,
)
from .events import (
    BreakerStateChanged,
    EventHub,
    QueueCleared,
    QueuePaused,
    QueueResumed,
    TaskCancelled,
    TaskProgressed,
    TaskRequeued,
    TaskSubmitted,
)
from .limits import check_templates, rate_spec, resolve_rate_keys
from .log import configure_logging, remove_handler, task_logger
from .models import (
    DeadLetter,
    ExecutionRecord,
    QueueStatus,
    TaskDefinition,
    TaskPriority,
    TaskRecord,
    TaskStatus,
    to_datetime,
)
from .queue import TaskQueue
from .registry import Registry
from .retry import RetryConfig, RetryPolicy
from .schedules import Missed, Priority, ScheduleDefinition, ScheduleName, ScheduleRecord, define
from .storage import logic
from .storage.base import TaskStore
from .storage.ops import Step
from .storage.queries import Component
from .storage.rows import progress_row
from .storage.types import NewTask, ScheduleFiring, SharedBreakerState, dispatch_key
from .tracing import carrier, submitting
from .validation import check_json_object, check_text

__all__ = [
    "Extension",
    "TaskManager",
    "get_task_manager",
    "load_extension",
    "set_task_manager",
]

F = TypeVar("F", bound=AnyTaskFunction)

#: The steps (an extension's rows) to store with a batch of tasks, given the tasks.
LinkedRows = Callable[[Sequence[NewTask]], Sequence[Step]]

logger = logging.getLogger("vpsweb_tasks.manager")

_DEAD_LETTER_PAGE = 200  # rows read at a time when filtering dead letters by category

#: The built-in schedule that runs the retention cleanup every cleanup_interval.
CLEANUP_SCHEDULE = "cleanup"

_schedule_name: TypeAdapter[str] = TypeAdapter(ScheduleName)


class Extension:
    """An application's way into the core, installed on a manager before it starts::

        manager = TaskManager(settings, extensions=[TranslationExtension()])

    Subclass it and set what applies (see docs/extending.md):

    * ``name``: unique among a manager's extensions; names its tables' migrations and its
      named queries (``<name>.<query>``).
    * ``component``: its tables, migrations and named queries per backend
      (:class:`~vpsweb_tasks.storage.queries.Component`); :meth:`TaskManager.install`
      adds it to the store, which migrates it on start. Its operations run through
      ``manager.store.run(...)``, and may write rows in the same transaction as a task's
      insert (``manager.submit_batch(..., linked=...)``) or completion
      (``context.write_on_completion(...)``).
    * ``sections``: the config sections it reads, by name, as pydantic models; validated
      at install (:meth:`~vpsweb_tasks.config.Settings.section` reads them).
    * ``routes``: ``"module:attribute"`` of its HTTP routes, a
      ``vpsweb_tasks_http.RouteGroup`` whose endpoints reach the manager through their
      guard (``state: Authorised``), or, in a group made with ``api_key=True``, through
      ``state_of(request)``; the HTTP app adds them (the core never imports them).
    * :meth:`setup`: register its task types, keep the manager.
    """

    name: ClassVar[str] = ""
    component: ClassVar[Component | None] = None
    sections: ClassVar[Mapping[str, type[BaseModel]]] = {}
    routes: ClassVar[str | None] = None

    def setup(self, manager: TaskManager) -> None:
        """Called once by :meth:`TaskManager.install`."""


def load_extension(path: str) -> Extension:
    """The extension named ``"module:name"``: an :class:`Extension` subclass (made with
    no arguments) or instance."""
    module_name, _, name = path.partition(":")
    if not module_name or not name:
        raise ValueError(f"{path!r} is not of the form module:name")
    found = getattr(importlib.import_module(module_name), name)
    if isinstance(found, type) and issubclass(found, Extension):
        return found()
    if not isinstance(found, Extension):
        raise TypeError(f"{path} is not a vpsweb_tasks Extension")
    return found


def make_store(settings: Settings) -> TaskStore:
    """The store named by the ``storage`` section."""
    storage = settings.storage
    if storage.backend == "postgres":
        from .storage import postgres

        store: TaskStore = postgres.PostgresTaskStore(
            storage.postgres_dsn,
            history_limit=settings.task_monitoring.progress_history_limit,
            task_metrics=settings.task_monitoring.enable_task_metrics,
        )
        return store
    from .storage.sqlite import SQLiteTaskStore

    return SQLiteTaskStore(
        storage.sqlite_path,
        synchronous=storage.sqlite_synchronous,
        busy_timeout=storage.busy_timeout,
        history_limit=settings.task_monitoring.progress_history_limit,
        task_metrics=settings.task_monitoring.enable_task_metrics,
        watch_interval=storage.sqlite_watch_interval,
        cache_mb=storage.sqlite_cache_mb,
        startup_check=storage.startup_check,
    )


#: Fields added to TaskDefinition after idempotency keys were: left out of a fingerprint
#: at their defaults, so a key stored before they existed still matches its repeat.
_LATER_FIELDS: dict[str, Any] = {
    "queue": "default",
    "depends_on": [],
    "on_dependency_failure": "cancel",
    "concurrency_key": None,
    "rate_limits": [],
}


def _fingerprinted(definition: TaskDefinition) -> dict[str, Any]:
    dumped = definition.model_dump(mode="json", exclude={"idempotency_key"})
    for name, default in _LATER_FIELDS.items():
        if dumped.get(name) == default:
            del dumped[name]
    return dumped


def _batch_payloads(
    definitions: Sequence[TaskDefinition],
    payloads: Sequence[dict[str, Any]] | None,
    keyed: str,
) -> Sequence[dict[str, Any]]:
    """The payloads of a batch, one a definition (empty by default); ``ValueError`` with
    ``keyed`` if a definition carries an idempotency key of its own."""
    if any(d.idempotency_key is not None for d in definitions):
        raise ValueError(keyed)
    if payloads is None:
        return [{} for _ in definitions]
    if len(payloads) != len(definitions):
        raise ValueError(f"{len(payloads)} payloads for {len(definitions)} definitions")
    return payloads


def request_fingerprint(
    tasks: Sequence[NewTask], definitions: Sequence[TaskDefinition], more: Any
) -> str:
    """A hash of what a submit asked for (each task's definition and payload, and ``more``:
    whether it was a batch, what else the request held), to tell a repeat under an
    idempotency key from another request."""
    asked = [
        [_fingerprinted(definition), task.payload]
        for task, definition in zip(tasks, definitions, strict=True)
    ]
    encoded = json.dumps([more, asked], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(encoded.encode()).hexdigest()


class TaskManager:
    """Submits, runs, cancels and answers questions about tasks. See the module docstring.

    Start it with ``async with manager:`` (or ``await manager.start()`` and
    ``await manager.stop()`` from the same task).
    """

    LOCAL_STOP_WAIT: ClassVar[float] = 1.0
    """How long :meth:`cancel` waits for a task running in this process to stop, so it
    can answer ``cancelled``: a cancel scope stops a task at its next checkpoint, but a
    handler may shield its clean-up."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        store: TaskStore | None = None,
        clock: Callable[[], float] = time.time,
        worker_id: str | None = None,
        retry_policy: RetryPolicy | None = None,
        events: EventHub | None = None,
        breakers: BreakerRegistry | None = None,
        extensions: Sequence[Extension] = (),
    ) -> None:
        self.settings = settings if settings is not None else load_config()
        self.config = self.settings.background_tasks
        #: task_monitoring.enable_task_tracing: log every progress update too.
        self._trace_progress = self.settings.task_monitoring.enable_task_tracing
        self._owns_store = store is None
        self.store = store if store is not None else make_store(self.settings)
        self.clock = clock
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.retry_policy = retry_policy or RetryPolicy(
            base_delay=self.config.retry_delay,
            max_retry_attempts=self.config.max_retry_attempts,
        )
        self.events = events or EventHub()
        #: Circuit breakers whose state changes this manager publishes and shares. By
        #: default the process-wide registry (``get_breaker``, ``@with_circuit_breaker``):
        #: a remote service is down for the whole process, whoever calls it.
        self.breakers = breakers if breakers is not None else get_breaker_registry()
        self._registry = Registry(self.worker_id)
        self._declared: set[str] = set(self.config.declared_task_types)
        self._declared_limits: dict[str, tuple[str, ...]] = {}
        #: The shared rate limits by name: the config's ``rate_limits`` and those
        #: extensions add (:meth:`add_rate_limit`).
        self.rate_limits: dict[str, RateLimitSettings] = dict(self.settings.rate_limits)
        self._contexts = Contexts(self)
        self._extensions: dict[str, Extension] = {}
        self._queue = self._new_queue()
        self._stack: AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._running = False
        self._log_handler: Any = None
        #: Schedules defined in code and config: (definition, origin), written at start.
        self._schedules: dict[str, tuple[ScheduleDefinition, str]] = {
            name: (definition, "config") for name, definition in self.settings.schedules.items()
        }
        self._scheduler_wakeup = anyio.Event()
        for name, fn in builtin_tasks(
            store=self.store, cleanup=self.cleanup, settings=self.config
        ).items():
            self.register(name, fn)
        for extension in extensions:
            self.install(extension)

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<TaskManager {self.worker_id} {state} on {self.store!r}>"

    def _new_queue(self) -> TaskQueue:
        return TaskQueue(
            settings=self.settings,
            store=self.store,
            worker_id=self.worker_id,
            clock=self.clock,
            retry_policy=self.retry_policy,
            events=self.events,
            breakers=self.breakers,
            registry=self._registry,
            contexts=self._contexts,
            spawn=self._tg_start,
            rate_limits=self.rate_limits,
        )

    # --- registry and extensions -----------------------------------------------------------

    def register(
        self,
        name: str,
        fn: AnyTaskFunction,
        *,
        retry: RetryConfig | None = None,
        process: bool = False,
        memory_limit_mb: float | None = None,
        rate_limits: Sequence[str] = (),
    ) -> None:
        """Register ``fn`` as the handler of task type ``name``.

        An ``async def`` function runs on the event loop; a plain ``def`` function in a
        worker thread (``background_tasks.thread_pool_size`` at once), where it reports
        progress with ``context.report_progress`` and checks for a stop with
        ``context.check_cancelled()``.

        ``process=True`` runs each task in a child process of a reused pool, under an
        address-space limit of ``memory_limit_mb`` (default
        ``background_tasks.task_memory_limit_mb``); a cancel or timeout kills the child.
        ``fn`` must be a module-level function (the child imports it by name) and gets a
        :class:`~vpsweb_tasks.context.ProcessContext`. Going past the limit fails the
        attempt with ``MemoryLimitError`` (category ``resource``).

        ``rate_limits``: the shared rate limits each task of the type takes a slot of
        when claimed: names of ``rate_limits`` entries, or key templates that fill fields
        from the payload (``"llm:{provider}:{model}"``: limit ``llm``, a key per provider
        and model). A task whose slot has not come waits without spending an attempt.

        Raises ValueError or TypeError naming the argument (a closure or lambda with
        ``process=True``, a ``memory_limit_mb`` below what Python needs to start), and
        RateLimitKeyError for a rate limit that is not configured.
        """
        templates = self._check_rate_limits(rate_limits)
        self._registry.register(
            name,
            fn,
            retry=retry,
            process=process,
            memory_limit_mb=memory_limit_mb,
            rate_limits=templates,
        )

    def _check_rate_limits(self, rate_limits: Sequence[str]) -> tuple[str, ...]:
        if isinstance(rate_limits, str):
            raise TypeError("rate_limits must be a list of limit names, not one string")
        return check_templates(rate_limits, self.rate_limits, field="rate_limits")

    def task(
        self,
        name: str | None = None,
        *,
        retry: RetryConfig | None = None,
        process: bool = False,
        memory_limit_mb: float | None = None,
        rate_limits: Sequence[str] = (),
    ) -> Callable[[F], F]:
        """Decorator: ``@manager.task("data_processing")`` registers a handler; the
        keywords are :meth:`register`'s (``@manager.task("resize", process=True,
        memory_limit_mb=512)``)."""

        def decorate(fn: F) -> F:
            self.register(
                name or fn.__name__,
                fn,
                retry=retry,
                process=process,
                memory_limit_mb=memory_limit_mb,
                rate_limits=rate_limits,
            )
            return fn

        return decorate

    @property
    def task_types(self) -> list[str]:
        """Names of the registered task types."""
        return self._registry.names

    def declare(self, name: str, *, rate_limits: Sequence[str] = ()) -> None:
        """Accept submits of task type ``name`` without a handler here: other processes'
        workers run it (an API-only process declares the types they register, rather than
        registering stubs). ``background_tasks.declared_task_types`` does the same.
        ``rate_limits``: as :meth:`register`'s (the keys are resolved at submit)."""
        templates = self._check_rate_limits(rate_limits)
        self._declared.add(name)
        if templates:
            self._declared_limits[name] = templates

    @property
    def accepted_task_types(self) -> list[str]:
        """The task types a submit to this manager may name: registered or declared."""
        return sorted(set(self._registry.names) | self._declared)

    def install(self, extension: Extension) -> None:
        """Install an extension (before :meth:`start`): validate its config sections, add
        its tables and queries to the store, and let it register its task types."""
        if self._running:
            raise RuntimeError(f"install {extension.name!r} before the manager starts")
        if not extension.name:
            raise ValueError(f"{type(extension).__name__} has no name")
        if extension.name in self._extensions:
            raise ValueError(f"an extension named {extension.name!r} is installed already")
        for section, kind in extension.sections.items():
            self.settings.section(section, kind)  # ConfigError now, not when first used
        if extension.component is not None:
            self.store.install(extension.component)
        self._extensions[extension.name] = extension
        extension.setup(self)

    @property
    def extensions(self) -> list[Extension]:
        """The installed extensions, in the order installed."""
        return list(self._extensions.values())

    def extension(self, name: str) -> Extension:
        """The installed extension of that name (``KeyError`` if none)."""
        try:
            return self._extensions[name]
        except KeyError:
            raise KeyError(f"no extension {name!r} is installed on {self!r}") from None

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    async def start(self) -> None:
        if self._running:
            return
        defined = self._defined_schedules()
        stack = AsyncExitStack()
        try:
            self._log_handler = configure_logging(self.settings.logging)
            self._warn_of_unread_sections()
            await stack.enter_async_context(self.events)
            if self._owns_store:
                await stack.enter_async_context(self.store)
            else:
                await self.store.open()
            tg = await stack.enter_async_context(anyio.create_task_group())
            self._tg = tg
            stack.callback(self.breakers.add_listener(self._forward_breaker_event))
            self._queue = self._new_queue()
            # Normally closed by the queue's stop; this also covers a start that fails.
            stack.push_async_callback(self._queue.processes.aclose)
            await self._queue.start(tg)
            stored = await self.store.run(logic.schedule_fingerprints())
            if changed := logic.changed_definitions(defined, stored):
                await self.store.run(logic.define_schedules(changed, now=self.clock()))
            if self.config.enabled:
                tg.start_soon(self._scheduler_loop)
        except BaseException:
            self._tg = None
            await stack.aclose()
            raise
        self._stack = stack
        self._running = True
        if self.config.gc_tuning:  # after start-up: what it made is frozen
            tune_garbage_collector()

    def _warn_of_unread_sections(self) -> None:
        read = {name for extension in self.extensions for name in extension.sections}
        for name in self.settings.extra_sections:
            if name not in read:
                logger.warning(
                    "config section %r is read by no installed extension (extensions: %s)",
                    name,
                    ", ".join(self._extensions) or "none",
                )

    async def stop(self) -> None:
        """Graceful shutdown: stop claiming, let running tasks finish within
        ``shutdown_grace_period``, then cancel and release the rest (they run again later,
        without losing an attempt), flush progress, close storage."""
        if not self._running or self._stack is None:
            return
        self._running = False
        stack, self._stack = self._stack, None
        try:
            with anyio.CancelScope(shield=True):
                await self._queue.stop()
        finally:
            assert self._tg is not None
            self._tg.cancel_scope.cancel()
            self._tg = None
            await stack.aclose()
            if self._log_handler is not None:
                remove_handler(self._log_handler)
                self._log_handler = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _forward_breaker_event(self, event: BreakerStateChanged) -> None:
        # Breakers call listeners synchronously, from the event loop's thread; publish in
        # the task group (tasks start in order, and the hub numbers events on entry).
        if self._tg is not None:
            self._tg.start_soon(self.events.publish, event)
            if not event.shared:
                self._tg.start_soon(self._share_breaker_state, event)

    async def _share_breaker_state(self, event: BreakerStateChanged) -> None:
        """Record a breaker's change for the other workers on this database."""
        opened_at = None
        if event.new_state != "closed" and event.name in self.breakers:
            opened_at = self.breakers.get(event.name).statistics().opened_at
        state = SharedBreakerState(
            name=event.name,
            state=event.new_state,
            opened_at=opened_at,
            retry_at=event.retry_at,
            updated_at=event.at,
            worker_id=self.worker_id,
        )
        try:
            await self.store.save_breaker_state(state)
        except Exception:
            logger.exception("could not share circuit breaker %r's state", event.name)

    def _require_running(self) -> anyio.abc.TaskGroup:
        if not self._running or self._tg is None:
            raise ManagerNotRunningError(
                "the task manager is not running:"
                " use `async with manager:` or `await manager.start()`"
            )
        return self._tg

    def _tg_start(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._tg is None:
            raise ManagerNotRunningError("the task manager has stopped")
        self._tg.start_soon(fn, *args)

    # --- submitting ------------------------------------------------------------------------

    def _prepare(
        self,
        definition: TaskDefinition,
        fn: TaskFunction | str | None,
        payload: dict[str, Any],
        *,
        after: Sequence[str] = (),
    ) -> tuple[NewTask, TaskFunction | None]:
        """The task to store for a submit; ``after``: dependencies besides the
        definition's own (a chain's or group's)."""
        if not isinstance(definition, TaskDefinition):
            raise TypeError("definition must be a TaskDefinition")
        if definition.queue not in self.config.queues:
            raise UnknownQueueError(definition.queue, list(self.config.queues))
        payload = check_json_object(payload, "payload")
        closure: TaskFunction | None = None
        if fn is None or isinstance(fn, str):
            name = fn or definition.task_type
            if name != definition.task_type:
                raise ValueError(
                    f"task type {name!r} does not match the definition's {definition.task_type!r}"
                )
            if self._registry.get(name) is None and name not in self._declared:
                raise UnknownTaskTypeError(name, self.accepted_task_types)
        elif not callable(fn):
            raise TypeError(
                "fn must be a function (async def or def) or a registered task type name"
            )
        else:
            spec = self._registry.get(definition.task_type)
            if spec is None or spec.fn is not fn:
                closure = fn
                if not self.config.enabled:
                    raise HandlerUnavailableError(
                        f"task {definition.name!r} is an unregistered callable and this process"
                        " runs no workers (background_tasks.enabled is false): register its"
                        " type with @manager.task so any worker can run it"
                    )
                if definition.queue not in self.config.worker_queues:
                    raise HandlerUnavailableError(
                        f"task {definition.name!r} is an unregistered callable, which only"
                        f" this process can run, and its workers do not serve queue"
                        f" {definition.queue!r} (background_tasks.worker_queues)"
                    )
        now = self.clock()
        task_id = new_task_id()
        run_at = max(now, definition.first_run_at(now))  # a time past runs now
        depends_on = definition.depends_on
        if after:
            depends_on = tuple(dict.fromkeys([*depends_on, *after]))
        if depends_on and (definition.run_at is not None or definition.delay):
            raise ValueError(
                "a task with dependencies runs when they finish: not with run_at or delay"
            )
        rate_keys: tuple[tuple[str, str], ...] = ()
        if self.rate_limits:  # none configured: no task can name one (checked at register)
            spec = self._registry.get(definition.task_type)
            templates = (
                spec.rate_limits
                if spec is not None and closure is None
                else self._declared_limits.get(definition.task_type, ())
            )
            rate_keys = resolve_rate_keys(
                (*templates, *definition.rate_limits), payload, self.rate_limits
            )
        elif definition.rate_limits:
            check_templates(definition.rate_limits, self.rate_limits, field="rate_limits")
        task = NewTask(
            id=task_id,
            name=definition.name,
            task_type=definition.task_type,
            priority=definition.priority.rank,
            max_retries=definition.max_retries,
            timeout_seconds=definition.timeout_seconds,
            payload=payload,
            metadata=definition.metadata,
            owner=self.worker_id if closure is not None else None,
            retry=None if definition.retry is None else definition.retry.model_dump(mode="json"),
            max_lost_attempts=definition.max_lost_attempts,
            run_at=run_at,
            created_at=now,
            trace_context=carrier(task_id),
            queue=definition.queue,
            dispatch_at=dispatch_key(
                run_at,
                definition.priority.rank,
                aging_seconds=self.config.priority_aging_seconds,
                by_priority=self.config.enable_priority_queue,
            ),
            depends_on=depends_on,
            on_dependency_failure=definition.on_dependency_failure,
            rate_keys=rate_keys,
            concurrency_key=definition.concurrency_key,
        )
        return task, closure

    def _new_context(
        self, task: NewTask, definition: TaskDefinition, closure: TaskFunction | None
    ) -> TaskContext:
        context = self._contexts.new(task.id, definition, task.payload)
        if closure is not None:
            self._registry.add_closure(task.id, closure)
        return context

    def create_task(
        self, definition: TaskDefinition, fn: TaskFunction | str | None = None
    ) -> TaskContext:
        """Create a task and return its context at once; it is stored in the background.

        Errors found before storing (unknown type, bad payload) raise here. An error while
        storing (e.g. ``QueueFullError``) is raised by ``await context.wait_stored()`` and
        ``await context.wait()``, and logged. Use :meth:`submit` to know it was stored.
        """
        tg = self._require_running()
        if definition.idempotency_key is not None:
            raise ValueError(
                "create_task returns before the task is stored, so it cannot hand back the"
                " task an idempotency key already holds: use await submit()"
            )
        with submitting([definition.task_type]):
            task, closure = self._prepare(definition, fn, {})
        context = self._new_context(task, definition, closure)
        tg.start_soon(functools.partial(self._store, [task], [context], raise_errors=False))
        return context

    async def submit(
        self,
        definition: TaskDefinition,
        fn: TaskFunction | str | None = None,
        /,
        **payload: Any,
    ) -> TaskContext:
        """Store a task durably and return its context. ``fn`` is an async callable, the
        name of a registered type, or None for the type named by ``definition.task_type``.
        Keyword arguments are the task's JSON payload (``context.payload``); ``definition``
        and ``fn`` are positional, so every key is free for the payload (``fn=1``,
        ``definition=...``, ``**{"any key": 1}``).

        With ``definition.idempotency_key`` held by a stored task, that task's context is
        returned (``context.replayed`` is true) and nothing is stored, if it was submitted
        with the same request; else ``IdempotencyKeyError``.

        Raises ``QueueFullError`` when ``max_queue_size`` tasks are waiting,
        ``UnknownTaskTypeError``, or ``InvalidInputError`` (a ``ValueError``) naming
        ``payload`` for a payload storage cannot hold (not JSON, a non-finite number, a
        lone surrogate, too large or too deep: :mod:`vpsweb_tasks.validation`).
        """
        self._require_running()
        with submitting([definition.task_type]):
            return await self._submit(definition, fn, payload)

    async def _submit(
        self, definition: TaskDefinition, fn: TaskFunction | str | None, payload: dict[str, Any]
    ) -> TaskContext:
        task, closure = self._prepare(definition, fn, payload)
        if definition.idempotency_key is not None:
            (context,) = await self._submit_keyed(
                definition.idempotency_key, [(task, closure)], [definition], None, batch=False
            )
            return context
        context = self._new_context(task, definition, closure)
        await self._store([task], [context], raise_errors=True)
        return context

    async def submit_batch(
        self,
        definitions: Sequence[TaskDefinition],
        fn: TaskFunction | str | None = None,
        *,
        payloads: Sequence[dict[str, Any]] | None = None,
        linked: LinkedRows | None = None,
        idempotency_key: str | None = None,
        idempotency_request: Any = None,
    ) -> list[TaskContext]:
        """Store several tasks all together or not at all, and return their contexts in
        order (dispatched in that order when priority and run time are equal).
        ``payloads`` are the tasks' payloads (default: empty), one per definition.
        ``linked(tasks)`` gives the steps that store an extension's rows for these tasks
        (e.g. their translation jobs), written in the same transaction.

        Every definition and payload is checked before anything is stored; the first
        problem raises as :meth:`submit` would. ``QueueFullError`` when the queue has no
        room for all of them, or the error of a linked row (a taken key): then nothing was
        stored. ``TaskSubmitted`` events are published only after the commit.

        ``idempotency_key`` is the batch's (its tasks hold ``KEY#0``, ``KEY#1``, ...): a
        repeat of the same batch gets the first one's tasks back (``replayed``), another
        batch under the key ``IdempotencyKeyError``. Definitions may not carry keys of
        their own in a batch. ``idempotency_request``: what else the request held (JSON),
        when the definitions and payloads do not hold all of it (an extension's linked
        rows): it is part of what a repeat must match."""
        self._require_running()
        payloads = _batch_payloads(
            definitions, payloads, "a batch has one idempotency_key (the argument), not one a task"
        )
        if not definitions:
            return []
        with submitting([definition.task_type for definition in definitions]):
            return await self._submit_batch(
                definitions, fn, payloads, linked, idempotency_key, idempotency_request
            )

    async def _submit_batch(
        self,
        definitions: Sequence[TaskDefinition],
        fn: TaskFunction | str | None,
        payloads: Sequence[dict[str, Any]],
        linked: LinkedRows | None,
        idempotency_key: str | None,
        idempotency_request: Any,
    ) -> list[TaskContext]:
        prepared = [
            self._prepare(definition, fn, payload)
            for definition, payload in zip(definitions, payloads, strict=True)
        ]
        if idempotency_key is not None:
            return await self._submit_keyed(
                idempotency_key,
                prepared,
                definitions,
                linked,
                batch=True,
                request=idempotency_request,
            )
        tasks = [task for task, _ in prepared]
        contexts = [
            self._new_context(task, definition, closure)
            for (task, closure), definition in zip(prepared, definitions, strict=True)
        ]
        steps = linked(tasks) if linked is not None else ()
        await self._store(tasks, contexts, linked=steps, raise_errors=True)
        return contexts

    async def chain(
        self,
        definitions: Sequence[TaskDefinition],
        fn: TaskFunction | str | None = None,
        *,
        payloads: Sequence[dict[str, Any]] | None = None,
    ) -> list[TaskContext]:
        """Store tasks that run one after another, all together or not at all: each
        depends on the one before it (and on its own ``depends_on``), so it starts once
        that one completed, with its result in ``context.dependency_results``. A failure
        cancels the rest (unless a task says ``on_dependency_failure="run"``). The
        contexts, in order."""
        return await self._submit_linked(
            definitions,
            fn,
            payloads,
            lambda i, ids: ids[i - 1 : i],
        )

    async def group(
        self,
        definitions: Sequence[TaskDefinition],
        *,
        then: TaskDefinition,
        fn: TaskFunction | str | None = None,
        payloads: Sequence[dict[str, Any]] | None = None,
        then_payload: dict[str, Any] | None = None,
    ) -> list[TaskContext]:
        """Fan out and in: store ``definitions`` (they run side by side) and ``then``,
        which depends on all of them and starts once they all completed, their results in
        its ``context.dependency_results`` (task id -> result). All stored together or
        not at all. The contexts, ``then``'s last."""
        if payloads is None:
            payloads = [{} for _ in definitions]
        if len(payloads) != len(definitions):
            raise ValueError(f"{len(payloads)} payloads for {len(definitions)} definitions")
        count = len(definitions)
        return await self._submit_linked(
            [*definitions, then],
            fn,
            [*payloads, then_payload or {}],
            lambda i, ids: ids[:count] if i == count else (),
        )

    async def _submit_linked(
        self,
        definitions: Sequence[TaskDefinition],
        fn: TaskFunction | str | None,
        payloads: Sequence[dict[str, Any]] | None,
        after: Callable[[int, list[str]], Sequence[str]],
    ) -> list[TaskContext]:
        """Store tasks in one transaction, task ``i`` depending on ``after(i, ids)`` too
        (``ids``: the ids of the tasks before it)."""
        self._require_running()
        payloads = _batch_payloads(
            definitions, payloads, "the tasks of a chain or group cannot carry idempotency keys"
        )
        prepared: list[tuple[NewTask, TaskFunction | None]] = []
        for i, (definition, payload) in enumerate(zip(definitions, payloads, strict=True)):
            ids = [task.id for task, _ in prepared]
            prepared.append(self._prepare(definition, fn, payload, after=after(i, ids)))
        tasks = [task for task, _ in prepared]
        contexts = [
            self._new_context(task, definition, closure)
            for (task, closure), definition in zip(prepared, definitions, strict=True)
        ]
        await self._store(tasks, contexts, raise_errors=True)
        return contexts

    # --- rate limits ---------------------------------------------------------------------

    def add_rate_limit(self, name: str, settings: RateLimitSettings) -> None:
        """Add a shared rate limit (before :meth:`start`): an extension's own, such as the
        translation extension's per provider (``llm:<provider>``). A name the config
        gives already keeps the config's."""
        if self._running:
            raise RuntimeError(f"add rate limit {name!r} before the manager starts")
        if not name or "{" in name:
            raise ValueError(f"a rate limit's name must be plain text, got {name!r}")
        self.rate_limits.setdefault(name, settings)

    def resolve_rate_key(self, limit: str, fields: Mapping[str, Any]) -> tuple[str, str]:
        """The (limit name, key) of a limit name or key template, its fields from
        ``fields``; RateLimitKeyError naming it if it cannot be resolved."""
        ((name, key),) = resolve_rate_keys([limit], fields, self.rate_limits)
        return name, key

    async def acquire_rate(self, limit: str, *, fields: Mapping[str, Any] | None = None) -> str:
        """Wait for a slot of the shared rate limit ``limit`` (a name or key template,
        fields from ``fields``) and take it; the key taken. Every process on the task
        database shares the limit (see ``context.acquire_rate``)."""
        name, key = self.resolve_rate_key(limit, fields or {})
        spec = rate_spec(self.rate_limits[name])
        while True:
            wait = await self.store.run(
                logic.acquire_rate(name=name, key=key, spec=spec, now=self.clock())
            )
            if wait <= 0:
                return key
            await anyio.sleep(wait)

    async def report_tokens(self, key: tuple[str, str], tokens: int) -> None:
        """Reconcile rate-limit ``key`` (limit name, key) with the tokens a call used."""
        name, resolved = key
        settings = self.rate_limits.get(name)
        if settings is None or settings.tokens is None or tokens <= 0:
            return
        await self.store.run(
            logic.report_tokens(
                name=name,
                key=resolved,
                spec=rate_spec(settings),
                tokens=int(tokens),
                now=self.clock(),
            )
        )

    async def limits_state(self) -> dict[str, Any]:
        """The configured limits and their shared state (``/api/v1/monitoring/limits``):
        each rate limit with its keys (next free slot, whether one is free now, tokens
        left in the window, requests and tokens taken so far: usage by key), the running
        bound per concurrency key with the keys that have running tasks, and the retry
        budgets."""
        now = self.clock()
        states = await self.store.run(logic.rate_limit_states())
        running = await self.store.run(logic.running_per_key())
        budgets: dict[str, Any] = {}
        for name, budget in sorted(self.settings.retry_budgets.items()):
            counts: dict[str, int | None] = {"calls": None, "retries": None}
            if name != "default":  # the budget of every dependency not listed
                calls, retries = await self.store.run(
                    logic.retry_budget_window(dependency=name, since=now - budget.window_seconds)
                )
                counts = {"calls": calls, "retries": retries}
            budgets[name] = {**budget.model_dump(), **counts}
        limits: dict[str, Any] = {}
        for name, settings in sorted(self.rate_limits.items()):
            keys = []
            for state in states:
                if state.name != name:
                    continue
                unpaid = max(0.0, state.tokens_paid_at - now)
                keys.append(
                    {
                        "key": state.key,
                        "next_free_at": max(state.next_free_at, now),
                        "free_now": state.next_free_at <= now
                        and (settings.tokens is None or unpaid < settings.per),
                        "tokens_left": None
                        if settings.tokens is None
                        else max(0, int(settings.tokens * (1 - unpaid / settings.per))),
                        "requests": state.requests,
                        "tokens": state.tokens,
                    }
                )
            limits[name] = {**settings.model_dump(), "keys": keys}
        return {
            "rate_limits": limits,
            "concurrency": {
                "max_running_per_key": self.config.max_running_per_key,
                "fair_share_seconds": self.config.fair_share_seconds,
                "running": running,
            },
            "retry_budgets": budgets,
        }

    async def dependencies(self, task_id: str) -> dict[str, TaskStatus | None]:
        """The tasks ``task_id`` depends on, each with its status (None: deleted by
        retention after the task finished), in the order given at submit."""
        record = await self.get_task(task_id)
        if not record.depends_on:
            return {}
        found = await self.store.run(logic.dependencies_of(task_id))
        return {dep: found.get(dep, (None, None))[0] for dep in record.depends_on}

    async def _submit_keyed(
        self,
        key: str,
        prepared: Sequence[tuple[NewTask, TaskFunction | None]],
        definitions: Sequence[TaskDefinition],
        linked: LinkedRows | None,
        *,
        batch: bool,
        request: Any = None,
    ) -> list[TaskContext]:
        """Store the tasks of one submit under idempotency ``key`` (a batch's tasks under
        ``KEY#0``, ``KEY#1``, ...), or find the ones a stored submit of the same request
        left (their contexts, ``replayed``)."""
        tasks = [task for task, _ in prepared]
        fingerprint = request_fingerprint(tasks, definitions, [batch, request])
        tasks = [
            dataclasses.replace(
                task,
                idempotency_key=f"{key}#{i}" if batch else key,
                request_fingerprint=fingerprint,
            )
            for i, (task, _) in enumerate(prepared)
        ]
        contexts = [
            self._new_context(task, definition, closure)
            for task, (_, closure), definition in zip(tasks, prepared, definitions, strict=True)
        ]
        steps = linked(tasks) if linked is not None else ()
        try:
            existing = await self.store.add_keyed_tasks(
                key,
                tasks,
                max_queue_size=self.config.max_queue_size,
                linked=steps,
                fair_share=self.config.fair_share_seconds,
                announce=functools.partial(self._wake_dispatcher, tasks),
            )
        except Exception as exc:
            self._not_stored(tasks, contexts, exc)
            raise
        if existing is None:
            await self._announce(tasks, contexts)
            return contexts
        for task in tasks:
            self._registry.drop_closure(task.id)
        return [self._contexts.replayed(record) for record in existing]

    def _wake_dispatcher(self, tasks: Sequence[NewTask]) -> None:
        for task in tasks:
            self._queue.notify(run_at=task.run_at)

    async def _store(
        self,
        tasks: Sequence[NewTask],
        contexts: Sequence[TaskContext],
        *,
        linked: Sequence[Step] = (),
        raise_errors: bool,
    ) -> None:
        """Store ``tasks`` (one transaction), then settle their contexts and announce
        them; on an error, fail every context. The dispatcher is woken as soon as a claim
        would see the tasks (the store says when: see ``TaskStore.add_tasks``)."""
        try:
            await self.store.add_tasks(
                tasks,
                max_queue_size=self.config.max_queue_size,
                linked=linked,
                announce=functools.partial(self._wake_dispatcher, tasks),
                fair_share=self.config.fair_share_seconds,
            )
        except anyio.get_cancelled_exc_class():
            # The insert may have gone on without us: what was stored is still announced.
            with anyio.CancelScope(shield=True):
                await self._settle_cancelled(tasks, contexts)
            raise
        except Exception as exc:
            self._not_stored(tasks, contexts, exc)
            if raise_errors:
                raise
            return
        await self._announce(tasks, contexts)

    def _not_stored(
        self, tasks: Sequence[NewTask], contexts: Sequence[TaskContext], error: BaseException
    ) -> None:
        for task, context in zip(tasks, contexts, strict=True):
            self._registry.drop_closure(task.id)
            context._mark_stored(None, error)
            task_logger(task.id, "vpsweb_tasks.manager").warning("not stored: %s", error)

    async def _settle_cancelled(
        self, tasks: Sequence[NewTask], contexts: Sequence[TaskContext]
    ) -> None:
        try:
            found = {record.id for record in await self.store.get_tasks([t.id for t in tasks])}
        except Exception:
            logger.exception("could not tell whether cancelled submits were stored")
            found = set()
        if found:
            stored = [(t, c) for t, c in zip(tasks, contexts, strict=True) if t.id in found]
            await self._announce([t for t, _ in stored], [c for _, c in stored])
        lost = [(t, c) for t, c in zip(tasks, contexts, strict=True) if t.id not in found]
        if lost:
            error = RuntimeError("the submit was cancelled before the task was stored")
            self._not_stored([t for t, _ in lost], [c for _, c in lost], error)

    async def _announce(self, tasks: Sequence[NewTask], contexts: Sequence[TaskContext]) -> None:
        log_submits = self._queue.logs_lifecycle()
        for task, context in zip(tasks, contexts, strict=True):
            context._mark_stored(task, None)
            if log_submits:
                task_logger(task.id, "vpsweb_tasks.manager", task_type=task.task_type).info(
                    "submitted %s %r (priority %s)",
                    task.task_type,
                    task.name,
                    TaskPriority.from_rank(task.priority),
                )
        for task in tasks:
            await self.events.publish(
                TaskSubmitted(
                    task=task.id,
                    task_type=task.task_type,
                    priority=TaskPriority.from_rank(task.priority).value,
                )
            )

    # --- reading ---------------------------------------------------------------------------

    async def get_task(self, task_id: str) -> TaskRecord:
        record = await self.store.get_task(task_id)
        if record is None:
            raise TaskNotFoundError(task_id)
        return record

    async def list_tasks(
        self,
        *,
        statuses: Collection[TaskStatus] | None = None,
        task_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
        order: str = "created_desc",
    ) -> list[TaskRecord]:
        return await self.store.list_tasks(
            statuses=statuses, task_type=task_type, limit=limit, offset=offset, order=order
        )

    async def list_executions(self, task_id: str) -> list[ExecutionRecord]:
        await self.get_task(task_id)
        return await self.store.list_executions(task_id)

    def context(self, task_id: str) -> TaskContext | None:
        """The live context of a task known to this process, if any."""
        return self._contexts.get(task_id)

    async def wait(
        self, task_id: str, *, timeout: float | None = None, _context: TaskContext | None = None
    ) -> TaskRecord:
        """Wait until the task is finished and return its final record. Tasks run by
        other processes are polled every ``queue_check_interval``."""
        with anyio.fail_after(timeout):
            context = _context or self._contexts.get(task_id)
            if context is None:
                context = self._contexts.of(await self.get_task(task_id))
            while not context.done:
                with anyio.move_on_after(self.config.queue_check_interval):
                    await context._done.wait()
                if not context.done:
                    context._apply(await self.get_task(task_id))
            record = context.record
            if record is None or not record.status.is_terminal:
                record = await self.get_task(task_id)
            return record

    async def _report_progress(
        self,
        context: TaskContext,
        progress: float,
        message: str | None,
        metadata: dict[str, Any] | None,
    ) -> None:
        task_id = context.task_id
        at = time.time()
        if self._trace_progress and logger.isEnabledFor(logging.INFO):
            task_logger(task_id, "vpsweb_tasks.progress").info(
                "progress %.1f%% %s", progress * 100, message or ""
            )
        if task_id in self._queue.running:
            self._queue.buffer_progress(progress_row(task_id, progress, message, metadata, at))
        await self.events.publish(
            TaskProgressed(
                task=task_id,
                task_type=context.task_type,
                at=at,
                progress=progress,
                message=message,
                status=context.status,
                metadata=metadata,
            )
        )

    # --- control ---------------------------------------------------------------------------

    async def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a task. The record returned says which happened:

        * ``status`` ``cancelled``: the task was waiting (``pending``, ``retrying``), or it
          ran in this process and has stopped (the answer waits up to
          ``LOCAL_STOP_WAIT`` seconds for its outcome to be written);
        * ``cancel_requested`` true, with the status the task had (``running``): a cancel
          was requested and the worker holding the task stops it through its cancel scope.
          A worker in another process hears of it at once (PostgreSQL's NOTIFY; SQLite's
          watch of the file), its heartbeat being the fallback; follow the task with
          :meth:`wait`. Work that returned before the request reached it completes.

        Raises ``TaskNotFoundError``, or ``TaskStateError`` if the task already finished."""
        self._require_running()
        now = self.clock()
        record = await self.store.request_cancel(task_id, now=now)
        if self._queue.logs_lifecycle():
            task_logger(task_id, "vpsweb_tasks.manager").info(
                "cancel requested (%s)", record.status
            )
        if record.status is TaskStatus.RUNNING:
            context = self._contexts.get(task_id)
            if context is not None:
                context._request_cancel()
            running = self._queue.cancel_running(task_id)
            if running is not None:
                with anyio.move_on_after(self.LOCAL_STOP_WAIT):
                    await running.done.wait()
                stopped = running.record
                if stopped is not None and stopped.status is TaskStatus.CANCELLED:
                    return stopped
        else:
            self._queue.finished(record)
            await self.events.publish(TaskCancelled(task=record.id, task_type=record.task_type))
            await self._queue.announce_cancelled_dependents([record.id], now=now)
        return record

    async def pause(self, reason: str | None = None) -> None:
        """Stop dispatching in every worker process; running tasks go on. ``reason``
        (shown in the queue status) is text storage can hold, else ``InvalidInputError``."""
        if reason is not None:
            check_text(reason, "reason")
        await self.store.set_paused(True, reason=reason)
        self._queue.set_shared_pause(True, reason)
        await self.events.publish(QueuePaused(reason=reason))

    async def resume(self) -> None:
        await self.store.set_paused(False)
        self._queue.set_shared_pause(False, None)
        await self.events.publish(QueueResumed())

    async def clear(self) -> int:
        """Cancel every pending and retrying task; return how many."""
        cancelled = await self.store.cancel_waiting(now=self.clock())
        for task_id in cancelled:
            if self._contexts.get(task_id) is not None:
                self._contexts.apply(await self.get_task(task_id))
            self._registry.drop_closure(task_id)
            await self.events.publish(TaskCancelled(task=task_id))
        await self.events.publish(QueueCleared(cancelled=len(cancelled)))
        return len(cancelled)

    async def queue_status(self) -> QueueStatus:
        counts = await self.store.count_tasks()
        return QueueStatus(
            paused=self._queue.paused,
            pause_reason=self._queue.pause_reason,
            pending=counts[TaskStatus.PENDING],
            retrying=counts[TaskStatus.RETRYING],
            running=counts[TaskStatus.RUNNING],
            running_here=len(self._queue.running),
            max_queue_size=self.config.max_queue_size,
            max_concurrent_jobs=self.config.max_concurrent_jobs,
            worker_id=self.worker_id,
            workers_enabled=self.config.enabled,
        )

    async def cleanup(self, *, retention_hours: float | None = None) -> int:
        """Delete finished tasks older than the retention period (with their rows in the
        other tables), and resource samples as old; return how many tasks."""
        hours = self.config.task_retention_hours if retention_hours is None else retention_hours
        before = self.clock() - hours * 3600
        total = 0
        # Small transactions, so other writers are never held up for long.
        while deleted := await self.store.run(logic.delete_finished(before=before)):
            total += deleted
        await self.store.run(logic.delete_samples(before=before))
        await self.store.run(logic.delete_ticks(before=before))
        if self.settings.retry_budgets:  # counts older than every window
            window = max(budget.window_seconds for budget in self.settings.retry_budgets.values())
            await self.store.run(logic.delete_retry_budget(before=self.clock() - window))
        return total

    @property
    def queue(self) -> TaskQueue:
        return self._queue

    # --- schedules ---------------------------------------------------------------------

    def schedule(
        self,
        name: str,
        *,
        task_type: str,
        cron: str | None = None,
        every: float | timedelta | None = None,
        timezone: str = "UTC",
        payload: Mapping[str, Any] | None = None,
        priority: Priority = "normal",
        enabled: bool = True,
        missed: Missed | None = None,
    ) -> ScheduleDefinition:
        """Define a schedule in code, before :meth:`start` (which writes it to storage):
        ``task_type`` is submitted at each tick of ``cron`` (5 fields, read in
        ``timezone``) or ``every`` so many seconds, with ``payload`` and ``priority``.

        At start a definition is added, or replaces the stored one if it changed; an
        unchanged one keeps its runtime state (paused or resumed at runtime, its next
        run). Deleted at runtime, it comes back at the next start. ``missed`` says what
        happens to ticks found late after a downtime (see
        ``background_tasks.schedule_missed``). Raises ``InvalidScheduleError`` naming
        the invalid field (``DuplicateScheduleError`` for a name defined already); an
        unregistered ``task_type`` raises ``UnknownTaskTypeError`` at start."""
        if self._running:
            raise RuntimeError(
                f"define schedule {name!r} before the manager starts, or add it at runtime"
                " with `await manager.add_schedule(...)`"
            )
        name = self._valid_schedule_name(name)
        definition = define(
            task_type=task_type,
            cron=cron,
            every=every,
            timezone=timezone,
            payload=dict(payload or {}),
            priority=priority,
            enabled=enabled,
            missed=missed,
        )
        if name in self._schedules:
            raise DuplicateScheduleError(name)
        self._schedules[name] = (definition, "code")
        return definition

    def scheduled(
        self,
        name: str | None = None,
        *,
        cron: str | None = None,
        every: float | timedelta | None = None,
        timezone: str = "UTC",
        payload: Mapping[str, Any] | None = None,
        priority: Priority = "normal",
        enabled: bool = True,
        missed: Missed | None = None,
        retry: RetryConfig | None = None,
        process: bool = False,
        memory_limit_mb: float | None = None,
    ) -> Callable[[F], F]:
        """Decorator: register a handler as task type ``name`` (default: the function's
        name) and define a schedule of the same name that submits it::

            @manager.scheduled(cron="0 3 * * *", timezone="Europe/Warsaw")
            async def nightly_report(context): ...

        The keywords are :meth:`schedule`'s, and ``retry``, ``process`` and
        ``memory_limit_mb`` are :meth:`register`'s."""

        def decorate(fn: F) -> F:
            task_type = name or fn.__name__
            self.schedule(
                task_type,
                task_type=task_type,
                cron=cron,
                every=every,
                timezone=timezone,
                payload=payload,
                priority=priority,
                enabled=enabled,
                missed=missed,
            )
            self.register(
                task_type, fn, retry=retry, process=process, memory_limit_mb=memory_limit_mb
            )
            return fn

        return decorate

    @staticmethod
    def _valid_schedule_name(name: str) -> str:
        try:
            return _schedule_name.validate_python(name)
        except ValidationError as exc:
            raise InvalidScheduleError("name", exc.errors()[0]["msg"]) from None

    def _defined_schedules(self) -> list[tuple[str, ScheduleDefinition, str]]:
        """The schedules of code and config, and the built-in cleanup (unless a schedule of
        its name replaces it), each of a registered task type."""
        defined = [(name, d, origin) for name, (d, origin) in self._schedules.items()]
        if CLEANUP_SCHEDULE not in self._schedules:
            cleanup = ScheduleDefinition(
                task_type="cleanup", every=self.config.cleanup_interval, priority="low"
            )
            defined.append((CLEANUP_SCHEDULE, cleanup, "builtin"))
        for name, definition, origin in defined:
            if self._registry.get(definition.task_type) is None:
                error = UnknownTaskTypeError(definition.task_type, self._registry.names)
                if origin == "config":
                    raise ConfigError(
                        f"invalid configuration:\n  schedules.{name}.task_type: {error}"
                    )
                raise error
        return defined

    async def add_schedule(
        self,
        name: str,
        definition: ScheduleDefinition | None = None,
        **fields: Any,
    ) -> ScheduleRecord:
        """Add a schedule at runtime (a definition, or :meth:`schedule`'s keywords); it is
        stored at once and every worker on the database fires it. Raises
        ``InvalidScheduleError`` naming the invalid field, ``DuplicateScheduleError`` if the
        name is taken, ``UnknownTaskTypeError`` for an unregistered task type (as a
        submit would); nothing is stored then."""
        self._require_running()
        name = self._valid_schedule_name(name)
        if definition is None:
            definition = define(**fields)
        elif fields:
            raise TypeError("give a definition or its fields, not both")
        if self._registry.get(definition.task_type) is None:
            raise UnknownTaskTypeError(definition.task_type, self._registry.names)
        record = await self.store.run(logic.add_schedule(name, definition, now=self.clock()))
        self._scheduler_wakeup.set()
        return record

    async def list_schedules(self) -> list[ScheduleRecord]:
        """Every stored schedule, by name."""
        return await self.store.run(logic.list_schedules())

    async def get_schedule(self, name: str) -> ScheduleRecord:
        """The schedule of that name; ``ScheduleNotFoundError`` if there is none."""
        record = await self.store.run(logic.get_schedule(name))
        if record is None:
            raise ScheduleNotFoundError(name)
        return record

    async def pause_schedule(self, name: str) -> ScheduleRecord:
        """Stop a schedule firing, in every process, until it is resumed (a definition in
        code or config that is unchanged at the next start leaves it paused)."""
        return await self.store.run(logic.set_schedule_enabled(name, False, now=self.clock()))

    async def resume_schedule(self, name: str) -> ScheduleRecord:
        """Fire a paused schedule again, from its first tick after now."""
        self._require_running()
        record = await self.store.run(logic.set_schedule_enabled(name, True, now=self.clock()))
        self._scheduler_wakeup.set()
        return record

    async def delete_schedule(self, name: str) -> None:
        """Delete a schedule and its ticks; ``ScheduleNotFoundError`` if there is none. One
        defined in code or config comes back at the next start."""
        self._require_running()
        await self.store.run(logic.delete_schedule(name))

    async def fire_due_schedules(self) -> list[ScheduleFiring]:
        """Fire the ticks due now (by :attr:`clock`) of every enabled schedule, each once
        across every process on the database, and announce their tasks. A worker's
        scheduler calls this at each tick; tests call it after moving a fake clock."""
        self._require_running()
        firings = await self.store.run(
            logic.fire_schedules(
                now=self.clock(),
                grace=self.config.schedule_grace,
                missed=self.config.schedule_missed,
                worker_id=self.worker_id,
                make_task=self._tick_task,
                limit=self.config.max_queue_size,
            )
        )
        for firing in firings:
            if firing.missed_since is not None:
                logger.warning(
                    "schedule %s: its ticks since %s were missed (no worker was up to fire"
                    " them in time); fired %d tick(s) now, next at %s",
                    firing.schedule,
                    to_datetime(firing.missed_since).isoformat(),
                    len(firing.ticks),
                    to_datetime(firing.next_run_at).isoformat(),
                )
            for tick in firing.ticks:
                if tick.task_id is None:
                    logger.warning(
                        "schedule %s: the queue was full at its tick %s; no task submitted",
                        firing.schedule,
                        to_datetime(tick.tick_at).isoformat(),
                    )
            self._wake_dispatcher(firing.tasks)
            for task in firing.tasks:
                if self._queue.logs_lifecycle():
                    task_logger(task.id, "vpsweb_tasks.manager").info(
                        "submitted %s %r by schedule %s", task.task_type, task.name, firing.schedule
                    )
                await self.events.publish(
                    TaskSubmitted(
                        task=task.id,
                        task_type=task.task_type,
                        priority=TaskPriority.from_rank(task.priority).value,
                    )
                )
        return firings

    def _tick_task(self, schedule: ScheduleRecord, tick_at: float) -> NewTask:
        definition = schedule.definition
        rank = TaskPriority(definition.priority).rank
        payload = dict(definition.payload)
        return NewTask(
            id=new_task_id(),
            name=f"{schedule.name} {to_datetime(tick_at).isoformat()}",
            task_type=definition.task_type,
            priority=rank,
            dispatch_at=dispatch_key(
                tick_at,
                rank,
                aging_seconds=self.config.priority_aging_seconds,
                by_priority=self.config.enable_priority_queue,
            ),
            max_retries=TaskDefinition.model_fields["max_retries"].default,
            payload=payload,
            metadata={"schedule": schedule.name, "tick": to_datetime(tick_at).isoformat()},
            run_at=tick_at,
            created_at=self.clock(),
            rate_keys=self._schedule_rate_keys(schedule.name, definition.task_type, payload),
        )

    def _schedule_rate_keys(
        self, schedule: str, task_type: str, payload: Mapping[str, Any]
    ) -> tuple[tuple[str, str], ...]:
        """The rate-limit keys of a scheduled task (its type's templates); none, with a
        warning, if its payload lacks a template's field (a tick is not refused)."""
        spec = self._registry.get(task_type)
        templates = spec.rate_limits if spec is not None else self._declared_limits.get(task_type)
        if not templates:
            return ()
        try:
            return resolve_rate_keys(templates, payload, self.rate_limits)
        except RateLimitKeyError as exc:
            logger.warning("schedule %s: its task is not rate limited: %s", schedule, exc)
            return ()

    async def _scheduler_loop(self) -> None:
        """Fire due schedules, then sleep until the next tick (read from storage: other
        processes add schedules too), at most ``schedule_check_interval``; a schedule
        added or resumed in this process wakes it at once. While nothing is due it only
        reads (one indexed query); the firing transaction runs when a tick is due."""
        while True:
            wakeup = self._scheduler_wakeup = anyio.Event()
            wait = self.config.schedule_check_interval
            try:
                next_at = await self.store.run(logic.next_schedule_at())
                if next_at is not None and next_at <= self.clock():
                    await self.fire_due_schedules()
                    next_at = await self.store.run(logic.next_schedule_at())
            except Exception:
                logger.exception("firing schedules failed; trying again shortly")
            else:
                if next_at is not None:
                    wait = min(wait, max(0.0, next_at - self.clock()))
            with anyio.move_on_after(wait):
                await wakeup.wait()

    # --- dead letter queue -------------------------------------------------------------

    async def _dead_letters(
        self, category: ErrorCategory | str | None, task_type: str | None
    ) -> AsyncGenerator[TaskRecord, None]:
        """Failed tasks, most recently failed first, a page at a time. The storage contract
        filters by status and type; the error category is filtered here."""
        wanted = None if category is None else ErrorCategory(category)
        page, offset = _DEAD_LETTER_PAGE, 0
        while True:
            batch = await self.store.list_tasks(
                statuses=[TaskStatus.FAILED],
                task_type=task_type,
                limit=page,
                offset=offset,
                order="finished_desc",
            )
            for record in batch:
                if wanted is None or record.error_category is wanted:
                    yield record
            if len(batch) < page:
                return
            offset += page

    async def list_dead_letters(
        self,
        *,
        category: ErrorCategory | str | None = None,
        task_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TaskRecord]:
        """Tasks in the dead letter queue (``failed``: retries exhausted or not retryable),
        most recently failed first, optionally of one error category and task type."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must be >= 0")
        if category is None:
            return await self.store.list_tasks(
                statuses=[TaskStatus.FAILED],
                task_type=task_type,
                limit=limit,
                offset=offset,
                order="finished_desc",
            )
        found: list[TaskRecord] = []
        seen = 0
        async with aclosing(self._dead_letters(category, task_type)) as records:
            async for record in records:
                if len(found) == limit:
                    break
                if seen >= offset:
                    found.append(record)
                seen += 1
        return found

    async def dead_letter(self, task_id: str) -> DeadLetter:
        """A failed task with every attempt's outcome and error (``task_executions``).
        Raises ``TaskNotFoundError``, or ``TaskStateError`` if the task is not failed."""
        record = await self.get_task(task_id)
        if record.status is not TaskStatus.FAILED:
            raise TaskStateError(task_id, record.status.value, "read the dead letter of")
        executions = await self.store.list_executions(task_id)
        return DeadLetter(task=record, executions=tuple(executions))

    async def requeue(self, task_id: str) -> TaskRecord:
        """Put a failed task back in the queue (``pending``, attempts reset to 0; its
        earlier attempts stay in its history). Raises ``TaskNotFoundError``,
        ``TaskStateError`` if it is not failed, or ``HandlerUnavailableError`` if it ran an
        unregistered callable (gone once the task failed: submit it again)."""
        self._require_running()
        record = await self.get_task(task_id)
        if record.status is TaskStatus.FAILED and record.owner is not None:
            raise HandlerUnavailableError(
                f"task {task_id} ran an unregistered callable, which is gone: submit it again"
            )
        requeued = []
        if record.status is TaskStatus.FAILED:
            requeued = await self.store.requeue_failed(now=self.clock(), task_ids=[task_id])
        if not requeued:  # not failed, or requeued by someone else meanwhile
            current = await self.get_task(task_id)
            raise TaskStateError(task_id, current.status.value, "requeue")
        await self._requeued(requeued)
        return requeued[0]

    async def requeue_all(
        self, *, category: ErrorCategory | str | None = None, task_type: str | None = None
    ) -> int:
        """Requeue every failed task (of this error category and task type); return how
        many. Tasks that ran unregistered callables are left where they are."""
        self._require_running()
        ids = [
            record.id
            async for record in self._dead_letters(category, task_type)
            if record.owner is None
        ]
        if not ids:
            return 0
        requeued = await self.store.requeue_failed(
            now=self.clock(),
            task_ids=ids,
            category=None if category is None else ErrorCategory(category),
            task_type=task_type,
        )
        await self._requeued(requeued)
        return len(requeued)

    async def _requeued(self, records: list[TaskRecord]) -> None:
        for record in records:
            self._contexts.apply(record)
            if self._queue.logs_lifecycle():
                task_logger(record.id, "vpsweb_tasks.manager").info(
                    "requeued from the dead letter queue"
                )
            await self.events.publish(
                TaskRequeued(task=record.id, task_type=record.task_type, reason="dead_letter")
            )
        if records:
            self._queue.notify()


def new_task_id() -> str:
    """A UUID (version 7 layout): 48 bits of milliseconds, then 74 random bits.

    Time-ordered ids keep inserts at the right edge of the primary-key index, and the
    random bits come from the ``random`` module (reseeded in forked children) rather than
    ``uuid4``'s os.urandom, a system call per id (benchmarks/README.md). Task ids are
    identifiers, not secrets: access is guarded by the API key, not by unguessable ids.
    """
    millis = time.time_ns() // 1_000_000
    bits = random.getrandbits(74)
    value = (
        (millis & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | (bits >> 62) << 64
        | 0b10 << 62
        | (bits & 0x3FFF_FFFF_FFFF_FFFF)
    )
    # str(uuid.UUID(int=value)), without making the object.
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_default: TaskManager | None = None


def get_task_manager() -> TaskManager:
    """The process-wide manager: the one passed to :func:`set_task_manager`, else a new one
    configured by :func:`load_config`, made on the first call (start it with ``async with
    get_task_manager():``). A manager never makes itself the default by starting."""
    global _default
    if _default is None:
        _default = TaskManager()
    return _default


def set_task_manager(manager: TaskManager | None) -> None:
    global _default
    _default = manager
