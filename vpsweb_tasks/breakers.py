"""Named circuit breakers: pybreaker's state machine, adapted to anyio.

::

    breaker = get_breaker("llm_provider")          # failure_threshold=5, recovery_timeout=60,
    async with breaker.guard():                    # half_open_max_calls=3
        response = await client.post(...)

    @with_circuit_breaker("llm_provider")
    async def translate(text: str) -> str: ...

A breaker is *closed* (calls go through; ``failure_threshold`` consecutive failures open
it), *open* (calls are rejected at once with :class:`~vpsweb_tasks.errors.CircuitOpenError`
carrying ``retry_at``, the time a trial call is allowed) or *half-open* (after
``recovery_timeout``, at most ``half_open_max_calls`` trial calls go through; a failed
trial opens it again, ``success_threshold`` successful trials close it).

pybreaker (1.4.1) keeps the state, the counters and the transitions closed -> open,
half-open -> open and half-open -> closed. Its own async support needs Tornado and its
``call(async_fn)`` records success on an unawaited coroutine, so this module drives it in
three synchronous steps around the ``await``, which anyio cannot interrupt:

* **admission**: rejected while open (before pybreaker's clock would even be read); once
  ``recovery_timeout`` has passed on *our* clock the breaker is moved to half-open here
  (pybreaker does that lazily too) and trial slots are handed out, at most
  ``half_open_max_calls`` per half-open period, concurrent or not.
* **outcome**: success or failure is fed to pybreaker with ``CircuitBreaker.call`` on a
  function that returns or raises the outcome, so its counters, exclusions and listeners
  apply as designed. An outcome is only recorded if the breaker has not changed state
  since the call was admitted: calls that were in flight when the breaker opened cannot
  re-trip it (pybreaker would, pushing ``opened_at`` forward) and a slow call admitted while
  closed does not count as a trial.
* **cancellation** (any ``BaseException`` that is not an ``Exception``: anyio cancellation,
  ``KeyboardInterrupt``...) is neither success nor failure: nothing is recorded and a trial
  slot is given back. pybreaker alone would count it as a failure.

Time comes from the registry's clock (``time.time`` by default; tests inject a fake one):
the storage records ``opened_at`` from it, and admission compares against it. The state
lives in a ``pybreaker.CircuitBreakerStorage`` made by the registry's ``storage`` factory,
so it can be shared (e.g. through the task database) by writing another factory; the
half-open trial limit and the statistics' counters stay per process.

State changes are published as :class:`~vpsweb_tasks.events.BreakerStateChanged` to the
registry's listeners (plain callables, called synchronously); a running
:class:`~vpsweb_tasks.manager.TaskManager` forwards them to its event hub.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from types import TracebackType
from typing import Annotated, NoReturn, ParamSpec, Self, TypeVar

import pybreaker
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .classify import ErrorClassifier, default_classifier
from .config import Seconds
from .errors import (
    CircuitOpenError,
    ConfigError,
    ErrorCategory,
)
from .events import BreakerStateChanged

__all__ = [
    "Breaker",
    "BreakerConfig",
    "BreakerListener",
    "BreakerRegistry",
    "BreakerState",
    "BreakerStatistics",
    "ClockedMemoryStorage",
    "StorageFactory",
    "get_breaker",
    "get_breaker_registry",
    "set_breaker_registry",
    "with_circuit_breaker",
]

logger = logging.getLogger("vpsweb_tasks.breakers")

P = ParamSpec("P")
T = TypeVar("T")

Clock = Callable[[], float]
#: Makes the pybreaker storage of the breaker with the given name; it must take the time
#: a breaker opens from the clock it is given (see :class:`ClockedMemoryStorage`).
StorageFactory = Callable[[str, Clock], pybreaker.CircuitBreakerStorage]
BreakerListener = Callable[[BreakerStateChanged], None]


class BreakerState(StrEnum):
    CLOSED = pybreaker.STATE_CLOSED
    OPEN = pybreaker.STATE_OPEN
    HALF_OPEN = pybreaker.STATE_HALF_OPEN


class BreakerConfig(BaseModel):
    """How a breaker trips and recovers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    failure_threshold: Annotated[int, Field(ge=1)] = 5
    """Consecutive failures that open the breaker."""
    recovery_timeout: Annotated[Seconds, Field(gt=0)] = 60.0
    """Seconds an open breaker rejects calls before it lets trial calls through."""
    half_open_max_calls: Annotated[int, Field(ge=1)] = 3
    """Trial calls let through per half-open period, concurrent or one after another."""
    success_threshold: Annotated[int, Field(ge=1)] = 1
    """Successful trials that close the breaker (at most half_open_max_calls)."""
    half_open_retry_after: Annotated[Seconds, Field(gt=0)] = 5.0
    """When every trial slot is taken, rejected callers are told to come back after this
    long (the trials' outcome is not known yet). Short enough to follow a recovery
    closely, long enough that deferred tasks do not cycle through the queue while slow
    trial calls run."""
    excluded_categories: frozenset[ErrorCategory] = frozenset(
        {ErrorCategory.VALIDATION, ErrorCategory.PERMISSION}
    )
    """Errors of these categories show the service answered: they count as successes
    (a 401 from a misconfigured key must fail its task, not open the breaker)."""

    @model_validator(mode="after")
    def _success_within_trials(self) -> Self:
        if self.success_threshold > self.half_open_max_calls:
            raise ValueError("success_threshold must not exceed half_open_max_calls")
        return self


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerStatistics:
    """A snapshot of one breaker. Counters cover the life of this process."""

    name: str
    state: BreakerState
    consecutive_failures: int
    """pybreaker's failure counter: failures since the last success."""
    failures: int
    """Failures recorded (each counted towards opening the breaker)."""
    successes: int
    """Successes recorded (excluded error categories included)."""
    rejections: int
    """Calls rejected without being made."""
    half_open_calls: int
    """Trial slots taken in the current half-open period (0 unless half-open)."""
    opened_at: float | None
    """Epoch seconds the breaker last opened (None while closed)."""
    retry_at: float | None
    """While open: epoch seconds from which a trial call is allowed."""
    config: BreakerConfig


class ClockedMemoryStorage(pybreaker.CircuitMemoryStorage):
    """pybreaker's in-memory state, except that the time a breaker opens is read from the
    given clock rather than ``datetime.now()``: that is what lets a fake clock drive a
    breaker deterministically."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(pybreaker.STATE_CLOSED)
        self._clock = clock
        self.adopted_opened_at: float | None = None

    @property
    def opened_at(self) -> datetime | None:
        return self._opened_at

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        # pybreaker passes datetime.now(UTC); the breaker's clock is the one that counts,
        # unless the state is being adopted from another worker, with its opening time.
        when = self.adopted_opened_at if self.adopted_opened_at is not None else self._clock()
        self._opened_at = datetime.fromtimestamp(when, UTC)


def _memory_storage(name: str, clock: Clock) -> pybreaker.CircuitBreakerStorage:
    return ClockedMemoryStorage(clock)


@dataclass(frozen=True, slots=True)
class _Ticket:
    generation: int
    trial: bool


def _succeed() -> None:
    return None


def _fail(exc: Exception) -> NoReturn:
    raise exc


class _StateListener(pybreaker.CircuitBreakerListener):
    def __init__(self, breaker: Breaker) -> None:
        self._breaker = breaker

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        self._breaker._state_changed(old_state.name if old_state else None, new_state.name)


class _Guard:
    """``async with breaker.guard():`` — one admission, one outcome."""

    __slots__ = ("_breaker", "_ticket")

    def __init__(self, breaker: Breaker) -> None:
        self._breaker = breaker
        self._ticket: _Ticket | None = None

    async def __aenter__(self) -> None:
        if self._ticket is not None:
            raise RuntimeError("a breaker guard cannot be entered twice")
        self._ticket = self._breaker._admit()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._ticket is not None
        self._breaker._settle(self._ticket, exc)


class Breaker:
    """One named circuit breaker; get it from a :class:`BreakerRegistry`."""

    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        *,
        clock: Clock,
        storage: pybreaker.CircuitBreakerStorage,
        classifier: ErrorClassifier,
        emit: BreakerListener,
    ) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._storage = storage
        self._classifier = classifier
        self._emit = emit
        self._lock = threading.RLock()
        self._generation = 0  # bumped by every state change: ends a period
        self._trials = 0
        self._failures = 0
        self._successes = 0
        self._rejections = 0
        self._adopting = False
        self._circuit = pybreaker.CircuitBreaker(
            fail_max=config.failure_threshold,
            reset_timeout=config.recovery_timeout,
            success_threshold=config.success_threshold,
            exclude=[self._is_excluded],
            listeners=[_StateListener(self)],
            state_storage=storage,
            name=name,
            throw_new_error_on_trip=False,  # the failure that trips it keeps its own error
        )

    def __repr__(self) -> str:
        return f"<Breaker {self.name!r} {self.state}>"

    # --- use --------------------------------------------------------------------------

    def guard(self) -> _Guard:
        """An async context manager around one call::

            async with breaker.guard():
                await client.get(url)

        Raises :class:`~vpsweb_tasks.errors.CircuitOpenError` on entry when the call is
        not allowed. An exception leaving the block is a failure (unless its category is
        excluded), a normal exit a success, a cancellation neither."""
        return _Guard(self)

    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """``await fn(*args, **kwargs)`` under this breaker."""
        async with self.guard():
            return await fn(*args, **kwargs)

    def reset(self) -> None:
        """Close the breaker now (an operator's override)."""
        with self._lock:
            self._circuit.close()

    def adopt(self, state: BreakerState | str, *, opened_at: float | None = None) -> bool:
        """Take on a state another worker recorded: ``open`` (since ``opened_at``, so the
        recovery timeout runs from the same moment everywhere) or ``closed``. A
        ``half-open`` state is not adopted: an open breaker past its recovery timeout lets
        its own trials through. Returns whether the state changed. The state change is
        published with ``shared=True``, so it is not recorded back to storage."""
        target = BreakerState(state)
        with self._lock:
            current = BreakerState(self._circuit.state.name)
            if target is current or target is BreakerState.HALF_OPEN:
                return False
            self._adopting = True
            try:
                if target is BreakerState.OPEN:
                    storage = self._storage
                    if isinstance(storage, ClockedMemoryStorage):
                        storage.adopted_opened_at = opened_at
                    try:
                        self._circuit.open()
                    finally:
                        if isinstance(storage, ClockedMemoryStorage):
                            storage.adopted_opened_at = None
                else:
                    self._circuit.close()
            finally:
                self._adopting = False
            return True

    # --- read -------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return BreakerState(self._circuit.state.name)

    def statistics(self) -> BreakerStatistics:
        with self._lock:
            state = BreakerState(self._circuit.state.name)
            opened_at = self._opened_at() if state is not BreakerState.CLOSED else None
            return BreakerStatistics(
                name=self.name,
                state=state,
                consecutive_failures=self._circuit.fail_counter,
                failures=self._failures,
                successes=self._successes,
                rejections=self._rejections,
                half_open_calls=self._trials if state is BreakerState.HALF_OPEN else 0,
                opened_at=opened_at,
                retry_at=self._retry_at() if state is BreakerState.OPEN else None,
                config=self.config,
            )

    # --- the state machine around pybreaker --------------------------------------------

    def _opened_at(self) -> float | None:
        opened: datetime | None = self._storage.opened_at
        return opened.timestamp() if opened is not None else None

    def _retry_at(self) -> float | None:
        opened_at = self._opened_at()
        return None if opened_at is None else opened_at + self.config.recovery_timeout

    def _is_excluded(self, exc: BaseException) -> bool:
        return self._classifier.classify(exc) in self.config.excluded_categories

    def _admit(self) -> _Ticket:
        with self._lock:
            state = self._circuit.state.name  # also picks up changes made through storage
            now = self._clock()
            if state == pybreaker.STATE_OPEN:
                retry_at = self._retry_at()
                if retry_at is not None and now < retry_at:
                    self._rejections += 1
                    raise CircuitOpenError(self.name, retry_at)
                self._circuit.half_open()
                state = pybreaker.STATE_HALF_OPEN
            if state == pybreaker.STATE_HALF_OPEN:
                if self._trials >= self.config.half_open_max_calls:
                    self._rejections += 1
                    raise CircuitOpenError(
                        self.name, now + self.config.half_open_retry_after, state=state
                    )
                self._trials += 1
                return _Ticket(self._generation, trial=True)
            return _Ticket(self._generation, trial=False)

    def _settle(self, ticket: _Ticket, exc: BaseException | None) -> None:
        with self._lock:
            self._circuit.state  # noqa: B018 - sync with storage before comparing periods
            current = ticket.generation == self._generation
            if exc is not None and not isinstance(exc, Exception):
                if current and ticket.trial:
                    self._trials -= 1  # cancelled: the slot goes to another caller
                return
            if not current:
                return  # admitted in a period that has ended: says nothing about now
            if exc is None:
                try:
                    self._circuit.call(_succeed)
                except Exception:  # e.g. shared storage unreachable: the call still succeeded
                    logger.exception("circuit breaker %r could not record a success", self.name)
                self._successes += 1
                return
            traceback = exc.__traceback__
            try:
                self._circuit.call(_fail, exc)
            except Exception as raised:
                if raised is not exc:
                    logger.exception("circuit breaker %r could not record a failure", self.name)
            finally:
                exc.__traceback__ = traceback  # keep pybreaker's frames out of the report
            if self._circuit.is_system_error(exc):
                self._failures += 1
            else:
                self._successes += 1

    def _state_changed(self, old: str | None, new: str) -> None:
        with self._lock:
            self._generation += 1
            self._trials = 0
            retry_at = self._retry_at() if new == pybreaker.STATE_OPEN else None
        if new == pybreaker.STATE_OPEN and self._adopting:
            logger.warning("circuit breaker %r opened by another worker", self.name)
        elif new == pybreaker.STATE_OPEN:
            logger.warning(
                "circuit breaker %r opened after %d failures; trial calls from %s",
                self.name,
                self._circuit.fail_counter,
                "now" if retry_at is None else datetime.fromtimestamp(retry_at, UTC).isoformat(),
            )
        else:
            logger.info("circuit breaker %r is %s (was %s)", self.name, new, old)
        self._emit(
            BreakerStateChanged(
                name=self.name,
                old_state=old or "",
                new_state=new,
                retry_at=retry_at,
                at=self._clock(),
                shared=self._adopting,
            )
        )


class BreakerRegistry:
    """Breakers by name, created on first use with the registry's defaults (or the config
    given for that name), sharing one clock, one storage factory and one set of
    listeners."""

    def __init__(
        self,
        defaults: BreakerConfig | None = None,
        *,
        configs: Mapping[str, BreakerConfig] | None = None,
        clock: Clock = time.time,
        storage: StorageFactory = _memory_storage,
        classifier: ErrorClassifier | None = None,
    ) -> None:
        self.defaults = defaults or BreakerConfig()
        self.clock = clock
        self._configs = dict(configs or {})
        self._storage = storage
        self._classifier = classifier or default_classifier
        self._breakers: dict[str, Breaker] = {}
        self._listeners: list[BreakerListener] = []
        self._lock = threading.Lock()

    def get(self, name: str, config: BreakerConfig | None = None) -> Breaker:
        """The breaker called ``name``, created if needed. A ``config`` different from
        the one an existing breaker was made with raises ``ConfigError``."""
        if not name:
            raise ValueError("a circuit breaker needs a name")
        with self._lock:
            breaker = self._breakers.get(name)
            if breaker is None:
                chosen = config or self._configs.get(name) or self.defaults
                breaker = Breaker(
                    name,
                    chosen,
                    clock=self.clock,
                    storage=self._storage(name, self.clock),
                    classifier=self._classifier,
                    emit=self._emit,
                )
                self._breakers[name] = breaker
            elif config is not None and config != breaker.config:
                raise ConfigError(
                    f"circuit breaker {name!r} already exists with {breaker.config!r}"
                )
            return breaker

    def __contains__(self, name: object) -> bool:
        return name in self._breakers

    @property
    def names(self) -> list[str]:
        return sorted(self._breakers)

    def statistics(self) -> dict[str, BreakerStatistics]:
        """A snapshot of every breaker, by name."""
        with self._lock:
            breakers = list(self._breakers.values())
        return {breaker.name: breaker.statistics() for breaker in breakers}

    def add_listener(self, fn: BreakerListener) -> Callable[[], None]:
        """Call ``fn(event)`` on every state change of every breaker of this registry,
        synchronously, on the thread that caused it; returns a function that removes it.
        A listener that raises is logged and does not affect the breaker."""
        with self._lock:
            self._listeners.append(fn)

        def remove() -> None:
            with self._lock:
                if fn in self._listeners:
                    self._listeners.remove(fn)

        return remove

    def _emit(self, event: BreakerStateChanged) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for fn in listeners:
            try:
                fn(event)
            except Exception:
                logger.exception("breaker listener %r failed on %s", fn, event.kind)


_registry: BreakerRegistry | None = None
_registry_lock = threading.Lock()


def get_breaker_registry() -> BreakerRegistry:
    """The process-wide registry (created with the defaults on first use)."""
    global _registry
    with _registry_lock:
        if _registry is None:
            _registry = BreakerRegistry()
        return _registry


def set_breaker_registry(registry: BreakerRegistry | None) -> None:
    """Replace the process-wide registry (None: a fresh one on next use)."""
    global _registry
    with _registry_lock:
        _registry = registry


def get_breaker(name: str, config: BreakerConfig | None = None) -> Breaker:
    """The process-wide breaker called ``name``."""
    return get_breaker_registry().get(name, config)


def with_circuit_breaker(
    name: str,
    *,
    config: BreakerConfig | None = None,
    registry: BreakerRegistry | None = None,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Run an async function under the breaker ``name`` (of ``registry``, by default the
    process-wide one, looked up at call time). Stack ``@with_retry`` on top for in-call
    retries: it leaves ``CircuitOpenError`` alone, for the queue to defer the task."""

    def decorate(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        if not (
            inspect.iscoroutinefunction(fn)
            or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004
        ):
            raise TypeError("with_circuit_breaker decorates async functions")

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            breaker = (registry or get_breaker_registry()).get(name, config)
            async with breaker.guard():
                return await fn(*args, **kwargs)

        return wrapper

    return decorate
