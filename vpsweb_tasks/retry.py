"""Retry strategies, the retry policy of the queue, and the ``with_retry`` decorator.

One layer retries. The queue retries a *task* durably: a failed attempt is recorded and
the next one is scheduled in storage (status ``retrying``), surviving restarts; the
decision comes from :class:`RetryPolicy`. ``@with_retry`` retries a *call* in memory, for
short hiccups inside one attempt. Do not wrap a task's whole body in ``with_retry`` and
also give it durable retries: the attempts multiply (VPSWeb's nested retries reach 16
calls a step). Pick one layer per failure mode.

Delays (``base`` is ``base_delay``, by default the queue's ``retry_delay``; ``n`` counts
retries from 0): exponential ``base * multiplier**n`` capped at ``max_delay``, with full
jitter (uniform in ``[0, delay]``) when ``jitter`` is on; linear ``base * (n + 1)``; fixed
``base``; immediate ``0``; none: no retry. A ``Retry-After`` hint carried by the error
(HTTP 429/503) is a lower bound on the delay.

Attempts of a task are capped by its ``max_retries + 1``, by ``max_retry_attempts + 1``
(config), by its error category's max attempts, and by the ``max_attempts`` of its own or
its type's ``RetryConfig``, whichever is smallest: a task's config picks the strategy and
may lower the count, it cannot make a validation error retryable. A task that raises
:class:`~vpsweb_tasks.errors.Retry` is the exception: it asked, so only its own
``max_retries`` (and ``max_retry_attempts``) cap it.
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, ParamSpec, TypeVar

import backoff
from pydantic import BaseModel, ConfigDict, Field

from .classify import ErrorClassifier, default_classifier, find_error, retry_after_hint
from .config import Seconds
from .errors import CircuitOpenError, ErrorCategory, Retry

__all__ = [
    "DEFAULT_CALL_DELAY",
    "DEFAULT_CATEGORY_RETRY",
    "LOST_ATTEMPT_RETRY",
    "RetryConfig",
    "RetryDecision",
    "RetryPolicy",
    "RetryStrategy",
    "with_retry",
]

logger = logging.getLogger("vpsweb_tasks.retry")

P = ParamSpec("P")
T = TypeVar("T")


class RetryStrategy(StrEnum):
    EXPONENTIAL_BACKOFF = "exponential"
    LINEAR_BACKOFF = "linear"
    FIXED_INTERVAL = "fixed"
    IMMEDIATE = "immediate"
    NO_RETRY = "none"


class RetryConfig(BaseModel):
    """How to retry. ``base_delay=None`` means "the surrounding default": the queue's
    ``retry_delay`` for durable retries, 1 second for ``with_retry``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    strategy: RetryStrategy = RetryStrategy.EXPONENTIAL_BACKOFF
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    base_delay: Annotated[Seconds, Field(ge=0)] | None = None
    multiplier: Annotated[float, Field(ge=1)] = 2.0
    max_delay: Annotated[Seconds, Field(gt=0)] = 3600.0
    jitter: bool = True

    def delay(
        self, retry: int, *, base_delay: float = 1.0, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first retry)."""
        if retry < 0:
            raise ValueError("retry must be >= 0")
        if self.strategy in (RetryStrategy.NO_RETRY, RetryStrategy.IMMEDIATE):
            return 0.0
        base = self.base_delay if self.base_delay is not None else base_delay
        waits = self._waits(base)
        next(waits)  # backoff's generators start with a priming yield
        value = 0.0
        try:
            for _ in range(retry + 1):
                value = float(next(waits))
        except OverflowError:  # multiplier**n beyond a float: far past any cap
            value = self.max_delay
        value = min(value, self.max_delay)
        if self.jitter and self.strategy is RetryStrategy.EXPONENTIAL_BACKOFF:
            value = rng.uniform(0, value) if rng is not None else backoff.full_jitter(value)
        return value

    def _waits(self, base: float) -> Generator[float, Any, None]:
        match self.strategy:
            case RetryStrategy.EXPONENTIAL_BACKOFF:
                waits: Generator[float, Any, None] = backoff.expo(
                    base=self.multiplier, factor=base, max_value=self.max_delay
                )
                return waits
            case RetryStrategy.LINEAR_BACKOFF:
                return _linear(base)
            case _:
                constant: Generator[float, Any, None] = backoff.constant(
                    interval=itertools.repeat(base)
                )
                return constant


def _linear(base: float) -> Generator[float, Any, None]:
    """``base * (n + 1)``, shaped like backoff's wait generators."""
    yield 0.0
    n = 0
    while True:
        yield base * (n + 1)
        n += 1


#: Defaults per error category (SPEC section 3).
DEFAULT_CATEGORY_RETRY: Mapping[ErrorCategory, RetryConfig] = {
    ErrorCategory.NETWORK: RetryConfig(strategy=RetryStrategy.EXPONENTIAL_BACKOFF, max_attempts=3),
    ErrorCategory.DATABASE: RetryConfig(strategy=RetryStrategy.EXPONENTIAL_BACKOFF, max_attempts=2),
    ErrorCategory.EXTERNAL_SERVICE: RetryConfig(
        strategy=RetryStrategy.EXPONENTIAL_BACKOFF, max_attempts=5
    ),
    ErrorCategory.TIMEOUT: RetryConfig(strategy=RetryStrategy.LINEAR_BACKOFF, max_attempts=2),
    ErrorCategory.VALIDATION: RetryConfig(strategy=RetryStrategy.NO_RETRY, max_attempts=1),
    ErrorCategory.PERMISSION: RetryConfig(strategy=RetryStrategy.NO_RETRY, max_attempts=1),
    ErrorCategory.RESOURCE: RetryConfig(strategy=RetryStrategy.FIXED_INTERVAL, max_attempts=3),
    ErrorCategory.UNKNOWN: RetryConfig(strategy=RetryStrategy.EXPONENTIAL_BACKOFF, max_attempts=3),
    ErrorCategory.BUDGET: RetryConfig(strategy=RetryStrategy.NO_RETRY, max_attempts=1),
}


#: How the attempts of a task that keep being lost with their workers are spaced, from
#: the second loss on (:meth:`RetryPolicy.lost_attempt_delay`): doubling, without jitter,
#: so that a task that kills its worker cannot crash-loop the fleet at full speed.
LOST_ATTEMPT_RETRY = RetryConfig(
    strategy=RetryStrategy.EXPONENTIAL_BACKOFF, max_attempts=100, jitter=False
)


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What to do after a failed attempt."""

    category: ErrorCategory
    retry_at: float | None
    """Epoch seconds of the next attempt; None: give up (dead letter queue)."""
    delay: float | None
    max_attempts: int
    reason: str

    @property
    def will_retry(self) -> bool:
        return self.retry_at is not None


class RetryPolicy:
    """Decides, for a failed attempt, whether and when the task runs again.

    The config used is, most specific first: the task's own, its task type's, then its
    error category's (overridable per category). A task's attempts are capped by its
    ``max_retries + 1``, by the config's ``max_attempts`` and by ``max_retry_attempts + 1``.
    A task that raises :class:`~vpsweb_tasks.errors.Retry` is retried after the delay it
    asks for, within its own ``max_retries``.
    """

    def __init__(
        self,
        *,
        base_delay: float = 60.0,
        max_retry_attempts: int = 3,
        categories: Mapping[ErrorCategory, RetryConfig] | None = None,
        task_types: Mapping[str, RetryConfig] | None = None,
        classifier: ErrorClassifier | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.base_delay = base_delay
        self.max_retry_attempts = max_retry_attempts
        self.categories = {**DEFAULT_CATEGORY_RETRY, **(categories or {})}
        self.task_types = dict(task_types or {})
        self.classifier = classifier or default_classifier
        self._rng = rng

    def config_for(
        self,
        category: ErrorCategory,
        *,
        task_type: str | None = None,
        task_config: RetryConfig | None = None,
    ) -> RetryConfig:
        if task_config is not None:
            return task_config
        if task_type is not None and task_type in self.task_types:
            return self.task_types[task_type]
        return self.categories[category]

    def decide(
        self,
        error: BaseException,
        *,
        attempts: int,
        max_retries: int,
        now: float,
        task_type: str | None = None,
        task_config: RetryConfig | None = None,
    ) -> RetryDecision:
        """``attempts`` is the number of attempts made so far, the failed one included."""
        category = self.classifier.classify(error)
        cap = min(max_retries, self.max_retry_attempts) + 1
        requested = find_error(error, Retry)
        if requested is not None:
            if attempts >= cap:
                return RetryDecision(category, None, None, cap, "retry requested, none left")
            delay = requested.delay
            return RetryDecision(category, now + delay, delay, cap, "retry requested")
        category_config = self.categories[category]
        config = self.config_for(category, task_type=task_type, task_config=task_config)
        if RetryStrategy.NO_RETRY in (config.strategy, category_config.strategy):
            return RetryDecision(category, None, None, 1, f"{category} errors are not retried")
        max_attempts = min(cap, config.max_attempts, category_config.max_attempts)
        if attempts >= max_attempts:
            return RetryDecision(
                category, None, None, max_attempts, f"gave up after {attempts} attempts"
            )
        delay = config.delay(attempts - 1, base_delay=self.base_delay, rng=self._rng)
        hint = retry_after_hint(error, now=now)
        if hint is not None and hint > delay:
            delay = hint
        return RetryDecision(
            category, now + delay, delay, max_attempts, f"{config.strategy} retry {attempts}"
        )

    def lost_attempt_delay(self, lost_attempts: int) -> float:
        """Seconds before a task runs again after its ``lost_attempts``-th attempt was lost
        with its worker (how many may be lost is the store's bound, not this policy's).

        The first loss is re-run at once: a worker killed by a deploy, a reboot or a
        neighbour's memory is no fault of the task, which already waited for the loss to
        be noticed. A second loss suggests the task kills its worker, and every crash also
        costs the tasks running beside it an attempt: from then on the delay is
        ``base_delay``, doubling with every further loss (capped at ``max_delay``), so the
        task cannot crash-loop the fleet at full speed while it uses up its bound."""
        if lost_attempts <= 1:
            return 0.0
        return LOST_ATTEMPT_RETRY.delay(lost_attempts - 2, base_delay=self.base_delay)


# --- in-call retries ----------------------------------------------------------------------


#: Base delay of ``with_retry`` when neither its config nor its caller gives one.
DEFAULT_CALL_DELAY = 1.0


def with_retry(
    retry_config: RetryConfig | None = None,
    *,
    base_delay: float | None = None,
    classifier: ErrorClassifier | None = None,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Retry an async function in memory when it raises, using backoff.

    With a ``retry_config``, every exception is retried by that config. Without one, each
    failure picks the strategy and attempt limit of its error category (SPEC section 3).
    Either way, validation and permission errors are never repeated, cancellation is
    never caught, and a ``Retry-After`` hint is honoured as the minimum delay.
    ``base_delay`` (default :data:`DEFAULT_CALL_DELAY`, 1 s) applies to configs that set
    none.

    A :class:`~vpsweb_tasks.errors.CircuitOpenError` is not retried here: the breaker
    says when to come back, which is the queue's job (it defers the task without
    spending an attempt). Retrying it in memory would only wait out the breaker.
    """
    classify = (classifier or default_classifier).classify

    def decorate(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            failures = 0
            base = DEFAULT_CALL_DELAY if base_delay is None else base_delay

            def config_for(exc: BaseException) -> RetryConfig:
                return retry_config or DEFAULT_CATEGORY_RETRY[classify(exc)]

            def give_up(exc: Exception) -> bool:
                category = classify(exc)
                if category in (ErrorCategory.VALIDATION, ErrorCategory.PERMISSION):
                    return True
                if find_error(exc, CircuitOpenError) is not None:
                    return True
                config = config_for(exc)
                return config.strategy is RetryStrategy.NO_RETRY or failures >= config.max_attempts

            def waits() -> Generator[float, Any, None]:
                exc = yield 0.0
                while True:
                    config = config_for(exc)
                    delay = config.delay(failures - 1, base_delay=base)
                    hint = retry_after_hint(exc)
                    exc = yield max(delay, hint or 0.0)

            @backoff.on_exception(waits, Exception, giveup=give_up, jitter=None, logger=logger)
            async def attempt() -> T:
                nonlocal failures
                try:
                    return await fn(*args, **kwargs)
                except Exception:
                    failures += 1
                    raise

            return await attempt()

        return wrapper

    return decorate
