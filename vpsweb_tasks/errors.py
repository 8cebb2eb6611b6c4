"""Exceptions raised by vpsweb-tasks, and the classification of task failures.

Every exception the library raises derives from one root::

    VpswebTasksError
    ├── ConfigError (ValueError)          invalid configuration; names the key
    ├── QueueFullError                    max_queue_size reached; nothing was stored
    ├── TaskNotFoundError (LookupError)   no task with that id
    │   └── TranslationJobNotFoundError   no translation job with that id
    ├── UnknownTaskTypeError (LookupError) no handler registered under that name
    ├── TaskStateError                    the task's status does not allow the operation
    ├── ManagerNotRunningError            the manager has not been started (or has stopped)
    ├── LeaseLostError                    a worker lost its claim on a task (fenced out)
    ├── ResultNotSerializableError        a handler returned something JSON cannot hold
    ├── TaskTimeoutError (TimeoutError)   a task ran past its timeout
    ├── WorkerLostError                   the worker running a task died (lease expired)
    ├── HandlerUnavailableError           the task's callable is gone (its process died)
    ├── CircuitOpenError                  a circuit breaker rejected the call
    ├── Retry                             raised by a task to ask for a retry after `delay`
    ├── TranslationNotConfiguredError (ConfigError)  no usable LLM provider for translations
    └── ProviderError                     an LLM provider's call failed (status, retry_after)
        ├── ProviderAuthError             401/403: the key is missing or wrong (permission)
        ├── ProviderRateLimitError        429, with the Retry-After it sent (external_service)
        ├── ProviderUnavailableError      5xx, timeout, dropped connection, unusable answer
        └── ProviderRequestError          another 4xx: the request itself is wrong (validation)

Failures of task code are not wrapped: they are *classified* into an
:class:`ErrorCategory` by :func:`classify_error`, which walks the exception's
``__cause__`` / ``__context__`` chain so that errors wrapped by application code
(VPSWeb wraps provider errors twice) keep their meaning, and looks into exception groups
(a handler's own task group wraps what its children raise). User rules registered
with :func:`register_error_rule` take precedence over the built-in ones. Every exception
gets exactly one category; ``unknown`` when nothing matches.
"""

from __future__ import annotations

import errno
import logging
import math
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, TypeVar

import httpx
import pybreaker

__all__ = [
    "CircuitOpenError",
    "ConfigError",
    "ErrorCategory",
    "ErrorClassifier",
    "HandlerUnavailableError",
    "LeaseLostError",
    "ManagerNotRunningError",
    "ProviderAuthError",
    "ProviderError",
    "ProviderRateLimitError",
    "ProviderRequestError",
    "ProviderUnavailableError",
    "QueueFullError",
    "ResultNotSerializableError",
    "Retry",
    "TaskNotFoundError",
    "TaskStateError",
    "TaskTimeoutError",
    "TranslationJobNotFoundError",
    "TranslationNotConfiguredError",
    "UnknownTaskTypeError",
    "VpswebTasksError",
    "WorkerLostError",
    "classify_error",
    "find_error",
    "register_error_rule",
    "retry_after_hint",
]


class ErrorCategory(StrEnum):
    """The eight failure categories; each has a default retry strategy (see retry.py)."""

    NETWORK = "network"
    DATABASE = "database"
    EXTERNAL_SERVICE = "external_service"
    TIMEOUT = "timeout"
    VALIDATION = "validation"
    PERMISSION = "permission"
    RESOURCE = "resource"
    UNKNOWN = "unknown"


class VpswebTasksError(Exception):
    """Root of every exception raised by vpsweb-tasks."""

    #: Category used when this error is the failure of a task.
    category: ErrorCategory = ErrorCategory.UNKNOWN


class ConfigError(VpswebTasksError, ValueError):
    """Invalid configuration. The message names each offending key."""

    category = ErrorCategory.VALIDATION


class QueueFullError(VpswebTasksError):
    """The queue holds ``max_queue_size`` waiting tasks (``size``), or too many to take
    all ``requested`` tasks of a batch; nothing was stored."""

    category = ErrorCategory.RESOURCE

    def __init__(self, limit: int, size: int, requested: int = 1) -> None:
        if requested == 1:
            message = f"queue is full: {size} waiting tasks, max_queue_size={limit}"
        else:
            message = (
                f"queue has no room for {requested} tasks: {size} waiting tasks,"
                f" max_queue_size={limit}"
            )
        super().__init__(message)
        self.limit = limit
        self.size = size
        self.requested = requested


class TaskNotFoundError(VpswebTasksError, LookupError):
    """No task with the given id exists (it may have been removed by retention cleanup)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task not found: {task_id}")
        self.task_id = task_id


class TranslationJobNotFoundError(TaskNotFoundError):
    """No translation job with the given id (the id may be another kind of task's)."""

    def __init__(self, job_id: str) -> None:
        VpswebTasksError.__init__(self, f"translation job not found: {job_id}")
        self.task_id = job_id
        self.job_id = job_id


class UnknownTaskTypeError(VpswebTasksError, LookupError):
    """No handler is registered under the given task type."""

    category = ErrorCategory.VALIDATION

    def __init__(self, task_type: str, registered: list[str]) -> None:
        known = ", ".join(sorted(registered)) or "(none)"
        super().__init__(f"unknown task type {task_type!r}; registered types: {known}")
        self.task_type = task_type
        self.registered = sorted(registered)


class TaskStateError(VpswebTasksError):
    """The task's current status does not allow the requested operation."""

    def __init__(self, task_id: str, status: str, operation: str) -> None:
        super().__init__(f"cannot {operation} task {task_id}: it is {status}")
        self.task_id = task_id
        self.status = status
        self.operation = operation


class ManagerNotRunningError(VpswebTasksError):
    """The task manager is not running; use ``async with manager:`` or ``await start()``."""


class LeaseLostError(VpswebTasksError):
    """A worker tried to record an outcome for a task it no longer holds."""


class ResultNotSerializableError(VpswebTasksError, TypeError):
    """A task returned a value that cannot be stored as JSON."""

    category = ErrorCategory.VALIDATION


class TaskTimeoutError(VpswebTasksError, TimeoutError):
    """A task ran longer than its timeout."""

    category = ErrorCategory.TIMEOUT


class WorkerLostError(VpswebTasksError):
    """The worker running the task stopped renewing its lease (it crashed or was killed)."""

    category = ErrorCategory.RESOURCE


class HandlerUnavailableError(VpswebTasksError):
    """The task's callable is not available in any live process."""

    category = ErrorCategory.RESOURCE


class CircuitOpenError(VpswebTasksError, pybreaker.CircuitBreakerError):
    """A circuit breaker rejected a call because it is open (or half-open with all its
    trial calls taken). Also a ``pybreaker.CircuitBreakerError``.

    A task failing with this error (anywhere in its chain) is deferred to ``retry_at``
    without spending an attempt.
    """

    category = ErrorCategory.EXTERNAL_SERVICE

    def __init__(self, name: str, retry_at: float | None = None, *, state: str = "open") -> None:
        detail = "is open" if state == "open" else f"is {state} and its trial calls are taken"
        super().__init__(f"circuit breaker {name!r} {detail}")
        self.breaker = name
        self.state = state
        #: Epoch seconds at which the breaker lets a trial call through again.
        self.retry_at = retry_at


class Retry(VpswebTasksError):
    """Raised by a task to be run again after ``delay`` seconds.

    The attempt still counts against the task's ``max_retries``.
    """

    def __init__(self, delay: float = 0.0, message: str = "retry requested") -> None:
        if delay < 0:
            raise ValueError("delay must be >= 0")
        super().__init__(message)
        self.delay = float(delay)


class TranslationNotConfiguredError(ConfigError):
    """Translation jobs cannot run: no LLM provider is configured (or its configuration is
    incomplete). ``problems`` lists what to configure, one key per entry."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("translation jobs are not configured: " + "; ".join(problems))
        self.problems = list(problems)


class ProviderError(VpswebTasksError):
    """A call to an LLM provider failed. ``status`` is the HTTP status (None when no
    answer came), ``retry_after`` the seconds the provider asked us to wait."""

    category = ErrorCategory.EXTERNAL_SERVICE

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.status = status
        self.retry_after = retry_after


class ProviderAuthError(ProviderError):
    """401/403: the API key is missing, wrong or not allowed. Not retried."""

    category = ErrorCategory.PERMISSION


class ProviderRateLimitError(ProviderError):
    """429: retried no sooner than the provider's Retry-After."""


class ProviderUnavailableError(ProviderError):
    """5xx, a timeout, a dropped connection or an answer that is not a chat completion."""


class ProviderRequestError(ProviderError):
    """Another 4xx (unknown model, request too large...): repeating it cannot help."""

    category = ErrorCategory.VALIDATION


# --- classification -------------------------------------------------------------------

Rule = tuple[type[BaseException] | Callable[[BaseException], bool], ErrorCategory]

_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.ENETRESET,
        errno.EHOSTUNREACH,
        errno.EHOSTDOWN,
        errno.ETIMEDOUT,
        errno.EPIPE,
        errno.ENOTCONN,
        errno.EADDRNOTAVAIL,
    }
)
_RESOURCE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.ENOMEM})


logger = logging.getLogger("vpsweb_tasks.errors")

E = TypeVar("E", bound=BaseException)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """Every exception that explains ``exc``, depth first: the exception, the members of
    an exception group (each with its own chain), then what it was raised from or while
    handling. Each exception once, however the chain loops."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        follow = current.__cause__ or current.__context__
        if follow is not None:
            stack.append(follow)
        if isinstance(current, BaseExceptionGroup):
            stack.extend(reversed(current.exceptions))


def find_error(exc: BaseException, kind: type[E]) -> E | None:
    """The first exception of type ``kind`` in ``exc``'s chain or groups, if any."""
    for link in _chain(exc):
        if isinstance(link, kind):
            return link
    return None


def _http_status_category(status: int) -> ErrorCategory:
    if status in (401, 403):
        return ErrorCategory.PERMISSION
    if status in (408, 429) or status >= 500:
        return ErrorCategory.EXTERNAL_SERVICE
    return ErrorCategory.VALIDATION


def _is_psycopg_operational(exc: BaseException) -> bool:
    # psycopg is an optional extra: recognise its errors without importing it.
    return any(
        cls.__module__.startswith("psycopg")
        and cls.__name__ in ("OperationalError", "InterfaceError")
        for cls in type(exc).__mro__
    )


def _builtin_category(exc: BaseException) -> ErrorCategory:
    """The category of one exception on its own, or UNKNOWN."""
    category = getattr(exc, "category", None)
    if isinstance(category, ErrorCategory) and category is not ErrorCategory.UNKNOWN:
        return category
    if isinstance(exc, pybreaker.CircuitBreakerError):
        return ErrorCategory.EXTERNAL_SERVICE
    if isinstance(exc, httpx.HTTPStatusError):
        return _http_status_category(exc.response.status_code)
    if isinstance(exc, httpx.TransportError):
        return ErrorCategory.NETWORK
    if isinstance(exc, PermissionError):
        return ErrorCategory.PERMISSION
    if isinstance(exc, TimeoutError):
        return ErrorCategory.TIMEOUT
    if isinstance(exc, MemoryError):
        return ErrorCategory.RESOURCE
    if isinstance(exc, ConnectionError):
        return ErrorCategory.NETWORK
    if isinstance(exc, sqlite3.Error):
        if "disk is full" in str(exc) or "disk I/O" in str(exc):
            return ErrorCategory.RESOURCE
        return ErrorCategory.DATABASE
    if _is_psycopg_operational(exc):
        return ErrorCategory.DATABASE
    if isinstance(exc, OSError):
        if exc.errno in _NETWORK_ERRNOS:
            return ErrorCategory.NETWORK
        if exc.errno in _RESOURCE_ERRNOS:
            return ErrorCategory.RESOURCE
        if type(exc).__module__ == "socket":  # gaierror, herror
            return ErrorCategory.NETWORK
    if isinstance(exc, ValueError):  # includes pydantic.ValidationError, JSONDecodeError
        return ErrorCategory.VALIDATION
    return ErrorCategory.UNKNOWN


class ErrorClassifier:
    """Maps exceptions to categories: user rules first, then the built-in table.

    A rule is an exception type (matched with ``isinstance``) or a predicate. Rules are
    tried against every exception in the chain, outermost first, before any built-in rule.
    """

    def __init__(self) -> None:
        self._rules: list[Rule] = []
        self._lock = threading.Lock()

    def register(
        self,
        matcher: type[BaseException] | Callable[[BaseException], bool],
        category: ErrorCategory | str,
    ) -> None:
        """Add a rule; later rules are tried before earlier ones."""
        rule: Rule = (matcher, ErrorCategory(category))
        with self._lock:
            self._rules.insert(0, rule)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def _user_category(self, exc: BaseException, rules: list[Rule]) -> ErrorCategory | None:
        for matcher, category in rules:
            if isinstance(matcher, type):
                if isinstance(exc, matcher):
                    return category
                continue
            try:
                matched = matcher(exc)
            except Exception:
                # Classification must always answer: a broken rule is skipped, not fatal.
                logger.exception("error rule %r failed on %r; rule skipped", matcher, exc)
                continue
            if matched:
                return category
        return None

    def classify(self, exc: BaseException) -> ErrorCategory:
        """Exactly one category for any exception: the first user rule matching any
        exception in the chain (outermost first), else the first built-in match, else
        ``unknown``."""
        chain = list(_chain(exc))
        with self._lock:
            rules = list(self._rules)
        if rules:
            for link in chain:
                found = self._user_category(link, rules)
                if found is not None:
                    return found
        for link in chain:
            try:
                category = _builtin_category(link)
            except Exception:  # e.g. a ``category`` property that raises
                continue
            if category is not ErrorCategory.UNKNOWN:
                return category
        return ErrorCategory.UNKNOWN


default_classifier = ErrorClassifier()


def classify_error(exc: BaseException) -> ErrorCategory:
    """The category of a failure, looking through wrapped causes."""
    return default_classifier.classify(exc)


def register_error_rule(
    matcher: type[BaseException] | Callable[[BaseException], bool],
    category: ErrorCategory | str,
) -> None:
    """Register a process-wide rule, e.g. ``register_error_rule(QuotaError, "resource")``."""
    default_classifier.register(matcher, category)


def _parse_retry_after(value: str, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now``: delay-seconds or an HTTP-date; None when
    malformed."""
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when: datetime = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def retry_after_hint(exc: BaseException, *, now: float | None = None) -> float | None:
    """Seconds the failing service asked us to wait (``Retry-After``), if any error says."""
    import time

    current = time.time() if now is None else now
    for link in _chain(exc):
        hint: Any = getattr(link, "retry_after", None)
        if isinstance(hint, int | float) and not isinstance(hint, bool) and math.isfinite(hint):
            return max(0.0, float(hint))
        if isinstance(link, httpx.HTTPStatusError):
            header = link.response.headers.get("retry-after")
            if header is not None:
                parsed = _parse_retry_after(header, current)
                if parsed is not None:
                    return parsed
    return None
