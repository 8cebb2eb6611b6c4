"""Classification of task failures: exception -> :class:`~vpsweb_tasks.errors.ErrorCategory`.

Failures of task code are not wrapped: they are *classified* into an
:class:`~vpsweb_tasks.errors.ErrorCategory` by :func:`classify_error`, which walks the
exception's ``__cause__`` / ``__context__`` chain so that errors wrapped by application
code (VPSWeb wraps provider errors twice) keep their meaning, and looks into exception
groups (a handler's own task group wraps what its children raise). User rules registered
with :func:`register_error_rule` take precedence over the built-in ones. Every exception
gets exactly one category; ``unknown`` when nothing matches.

The built-in rules, tried on each exception of the chain in turn, the first match winning:
a library error's own ``category``; pybreaker's rejection (external_service); httpx's
status errors by status (401/403 permission, 408/429/5xx external_service, other 4xx
validation) and its transport errors (network); ``PermissionError``, ``TimeoutError``,
``MemoryError`` (resource), ``ConnectionError`` (network); sqlite3's errors (database, or
resource when the disk is full) and psycopg's operational ones (database, recognised
without importing psycopg); ``OSError`` by errno (network or resource) and socket's DNS
errors (network); ``ValueError`` (validation, pydantic's and JSON's errors included).

:func:`retry_after_hint` reads the delay a failing service asked for (a ``retry_after``
attribute, or an HTTP ``Retry-After`` header) from the same chain.
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
from typing import Any, TypeVar

import httpx
import pybreaker

from .errors import ErrorCategory

__all__ = [
    "ErrorClassifier",
    "classify_error",
    "default_classifier",
    "find_error",
    "parse_retry_after",
    "register_error_rule",
    "retry_after_hint",
]

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


logger = logging.getLogger("vpsweb_tasks.classify")

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


def parse_retry_after(value: str, now: float) -> float | None:
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
                parsed = parse_retry_after(header, current)
                if parsed is not None:
                    return parsed
    return None
