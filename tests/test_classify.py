"""Error classification (vpsweb_tasks.classify): the built-in table, wrapped errors,
exception groups, user rules, Retry-After hints, and totality (every exception gets
exactly one category)."""

from __future__ import annotations

import asyncio
import errno
import math
import socket
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.utils import formatdate

import anyio
import httpx
import psycopg
import pybreaker
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vpsweb_tasks import CircuitOpenError, ErrorCategory, Retry, classify_error, register_error_rule
from vpsweb_tasks.classify import (
    ErrorClassifier,
    default_classifier,
    find_error,
    parse_retry_after,
    retry_after_hint,
)
from vpsweb_tasks.errors import TaskTimeoutError, WorkerLostError

from .support import Reply, closed_port, loopback_server

pytestmark = pytest.mark.anyio

NOW = 1_800_000_000.0


def status_error(status: int, headers: dict[str, str] | None = None) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://provider.test/v1/chat/completions")
    response = httpx.Response(status, headers=headers or {}, request=request)
    return httpx.HTTPStatusError(f"HTTP {status}", request=request, response=response)


def wrapped(cause: BaseException) -> RuntimeError:
    """``RuntimeError(...)`` raised ``from cause``, as application code wraps errors."""
    wrapper = RuntimeError(f"wrapped: {cause!r}")
    wrapper.__cause__ = cause
    return wrapper


class _Model(pydantic.BaseModel):
    n: int


def _validation_error() -> pydantic.ValidationError:
    try:
        _Model(n="many")  # type: ignore[arg-type]
    except pydantic.ValidationError as exc:
        return exc
    raise AssertionError("pydantic accepted a bad value")


TABLE: list[tuple[BaseException, ErrorCategory]] = [
    (ConnectionRefusedError(), ErrorCategory.NETWORK),
    (httpx.ConnectError("refused"), ErrorCategory.NETWORK),
    (httpx.ReadTimeout("slow"), ErrorCategory.NETWORK),
    (httpx.RemoteProtocolError("bad"), ErrorCategory.NETWORK),
    (OSError(errno.ENETUNREACH, "unreachable"), ErrorCategory.NETWORK),
    (socket.gaierror(-2, "Name or service not known"), ErrorCategory.NETWORK),
    (sqlite3.OperationalError("database is locked"), ErrorCategory.DATABASE),
    (psycopg.OperationalError("connection lost"), ErrorCategory.DATABASE),
    (sqlite3.OperationalError("database or disk is full"), ErrorCategory.RESOURCE),
    (pybreaker.CircuitBreakerError("open"), ErrorCategory.EXTERNAL_SERVICE),
    (CircuitOpenError("llm", retry_at=NOW), ErrorCategory.EXTERNAL_SERVICE),
    (TimeoutError(), ErrorCategory.TIMEOUT),
    (TaskTimeoutError("ran too long"), ErrorCategory.TIMEOUT),
    (ValueError("bad"), ErrorCategory.VALIDATION),
    (_validation_error(), ErrorCategory.VALIDATION),
    (PermissionError("no"), ErrorCategory.PERMISSION),
    (MemoryError(), ErrorCategory.RESOURCE),
    (OSError(errno.ENOSPC, "No space left on device"), ErrorCategory.RESOURCE),
    (WorkerLostError("gone"), ErrorCategory.RESOURCE),
    (RuntimeError("?"), ErrorCategory.UNKNOWN),
    (KeyError("k"), ErrorCategory.UNKNOWN),
    (Retry(delay=1), ErrorCategory.UNKNOWN),
]


@pytest.mark.parametrize(("exc", "category"), TABLE, ids=lambda v: type(v).__name__)
def test_the_builtin_table(exc: BaseException, category: ErrorCategory) -> None:
    assert classify_error(exc) is category


@pytest.mark.parametrize(
    ("status", "category"),
    [
        (401, ErrorCategory.PERMISSION),
        (403, ErrorCategory.PERMISSION),
        (408, ErrorCategory.EXTERNAL_SERVICE),
        (429, ErrorCategory.EXTERNAL_SERVICE),
        (500, ErrorCategory.EXTERNAL_SERVICE),
        (502, ErrorCategory.EXTERNAL_SERVICE),
        (503, ErrorCategory.EXTERNAL_SERVICE),
        (400, ErrorCategory.VALIDATION),
        (404, ErrorCategory.VALIDATION),
        (422, ErrorCategory.VALIDATION),
    ],
)
async def test_http_status_errors_from_a_real_server(status: int, category: ErrorCategory) -> None:
    async with loopback_server() as server, httpx.AsyncClient() as client:
        server.always(Reply(status))
        response = await client.get(server.url)
        with pytest.raises(httpx.HTTPStatusError) as caught:
            response.raise_for_status()
    assert classify_error(caught.value) is category


async def test_a_refused_connection_is_a_network_error() -> None:
    port = await closed_port()
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.get(f"http://127.0.0.1:{port}/")
    assert classify_error(caught.value) is ErrorCategory.NETWORK


def test_wrapped_errors_keep_their_meaning() -> None:
    class ProviderError(Exception):
        pass

    class StepError(Exception):
        pass

    def translate_step() -> None:
        # VPSWeb wraps a provider error twice, once explicitly and once implicitly.
        try:
            try:
                raise status_error(401)
            except httpx.HTTPStatusError as exc:
                raise ProviderError("provider refused") from exc
        except ProviderError:
            raise StepError("Initial Translation failed")  # noqa: B904 - implicit context

    with pytest.raises(StepError) as caught:
        translate_step()
    assert classify_error(caught.value) is ErrorCategory.PERMISSION


async def test_errors_wrapped_by_a_handlers_own_task_group() -> None:
    async def fail(exc: BaseException) -> None:
        raise exc

    with pytest.raises(ExceptionGroup) as caught:
        async with anyio.create_task_group() as tg:
            tg.start_soon(fail, PermissionError("denied"))
    assert classify_error(caught.value) is ErrorCategory.PERMISSION

    nested = ExceptionGroup(
        "outer",
        [RuntimeError("no category"), ExceptionGroup("inner", [status_error(503)])],
    )
    assert classify_error(nested) is ErrorCategory.EXTERNAL_SERVICE
    # Members are looked at in order; the first one with a category decides.
    mixed = ExceptionGroup("two", [ConnectionResetError(), ValueError("bad")])
    assert classify_error(mixed) is ErrorCategory.NETWORK
    # A member's own chain counts too.
    member = wrapped(sqlite3.OperationalError("locked"))
    assert classify_error(ExceptionGroup("g", [member])) is ErrorCategory.DATABASE


def test_find_error_looks_through_chains_and_groups() -> None:
    rejected = CircuitOpenError("llm", retry_at=NOW + 60)
    group = ExceptionGroup("handler", [ValueError("x"), wrapped(rejected)])
    assert find_error(group, CircuitOpenError) is rejected
    assert find_error(ValueError("x"), CircuitOpenError) is None


def test_chains_that_loop_terminate() -> None:
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__context__, b.__context__ = b, a
    assert classify_error(a) is ErrorCategory.UNKNOWN
    c = ConnectionError("c")
    c.__cause__ = c
    assert classify_error(c) is ErrorCategory.NETWORK


def test_user_rules_come_first_newest_first() -> None:
    classifier = ErrorClassifier()

    class QuotaExceeded(Exception):
        pass

    classifier.register(QuotaExceeded, "resource")
    assert classifier.classify(QuotaExceeded()) is ErrorCategory.RESOURCE
    # A rule beats the built-in table, anywhere in the chain.
    classifier.register(lambda e: "rate limit" in str(e), ErrorCategory.EXTERNAL_SERVICE)
    assert (
        classifier.classify(wrapped(ValueError("rate limit reached")))
        is ErrorCategory.EXTERNAL_SERVICE
    )
    classifier.register(QuotaExceeded, ErrorCategory.PERMISSION)
    assert classifier.classify(QuotaExceeded()) is ErrorCategory.PERMISSION
    classifier.clear()
    assert classifier.classify(QuotaExceeded()) is ErrorCategory.UNKNOWN


def test_a_broken_rule_is_skipped_not_fatal() -> None:
    classifier = ErrorClassifier()

    def broken(exc: BaseException) -> bool:
        raise AttributeError("rule bug")

    classifier.register(broken, ErrorCategory.RESOURCE)
    assert classifier.classify(ConnectionError()) is ErrorCategory.NETWORK


@contextmanager
def process_rules() -> Iterator[None]:
    saved = list(default_classifier._rules)
    try:
        yield
    finally:
        default_classifier._rules[:] = saved


def test_register_error_rule_is_process_wide() -> None:
    class BillingError(Exception):
        pass

    with process_rules():
        register_error_rule(BillingError, "permission")
        assert classify_error(BillingError()) is ErrorCategory.PERMISSION
    assert classify_error(BillingError()) is ErrorCategory.UNKNOWN


def test_circuit_open_error_is_a_pybreaker_error_and_carries_retry_at() -> None:
    error = CircuitOpenError("llm", retry_at=NOW + 60)
    assert isinstance(error, pybreaker.CircuitBreakerError)
    assert error.retry_at == NOW + 60
    assert "'llm' is open" in str(error)
    full = CircuitOpenError("llm", retry_at=NOW + 1, state="half-open")
    assert "half-open and its trial calls are taken" in str(full)


# --- Retry-After ------------------------------------------------------------------------


def test_retry_after_seconds_and_http_date() -> None:
    assert retry_after_hint(status_error(429, {"Retry-After": "120"}), now=NOW) == 120.0
    date = formatdate(NOW + 300, usegmt=True)  # e.g. "Fri, 15 Jan 2027 08:00:00 GMT"
    assert retry_after_hint(status_error(503, {"Retry-After": date}), now=NOW) == 300.0
    past = formatdate(NOW - 300, usegmt=True)
    assert retry_after_hint(status_error(503, {"Retry-After": past}), now=NOW) == 0.0
    assert retry_after_hint(status_error(503, {"Retry-After": "soon"}), now=NOW) is None
    assert retry_after_hint(status_error(503, {"Retry-After": "inf"}), now=NOW) is None
    assert retry_after_hint(status_error(503), now=NOW) is None


def test_retry_after_is_found_in_chains_groups_and_attributes() -> None:
    member = wrapped(status_error(429, {"Retry-After": "7"}))
    assert retry_after_hint(ExceptionGroup("g", [member]), now=NOW) == 7.0

    class RateLimited(Exception):
        retry_after = 2.5

    assert retry_after_hint(RateLimited(), now=NOW) == 2.5


# --- totality ---------------------------------------------------------------------------


class _NastyCategory(Exception):
    @property
    def category(self) -> ErrorCategory:
        raise RuntimeError("property bug")


class _Odd(Exception):
    category = "not a category"
    retry_after = float("nan")


LEAVES: list[Callable[[], BaseException]] = [
    *[(lambda e=exc: e) for exc, _ in TABLE],
    lambda: status_error(401),
    lambda: status_error(503, {"Retry-After": "30"}),
    lambda: status_error(429, {"Retry-After": "garbage"}),
    lambda: OSError(errno.EACCES, "denied"),
    lambda: _NastyCategory(),
    lambda: _Odd(),
    lambda: KeyboardInterrupt(),
    lambda: SystemExit(2),
    lambda: GeneratorExit(),
    lambda: asyncio.CancelledError(),
    lambda: Exception(),
]


@st.composite
def exceptions(draw: st.DrawFn, depth: int = 3) -> BaseException:
    """Arbitrary exceptions: leaves, chains (cause or context), groups, loops."""
    leaf = LEAVES[draw(st.integers(0, len(LEAVES) - 1))]()
    if depth == 0:
        return leaf
    shape = draw(st.sampled_from(["leaf", "cause", "context", "group", "loop"]))
    if shape == "leaf":
        return leaf
    if shape in ("cause", "context"):
        inner = draw(exceptions(depth - 1))
        outer = RuntimeError("wrapper")
        setattr(outer, f"__{shape}__", inner)
        return outer
    if shape == "group":
        members = draw(st.lists(exceptions(depth - 1), min_size=1, max_size=3))
        if all(isinstance(m, Exception) for m in members):
            return ExceptionGroup("group", members)
        return BaseExceptionGroup("group", members)
    inner = draw(exceptions(depth - 1))
    inner.__context__ = leaf
    leaf.__context__ = inner
    return leaf


@given(exceptions())
def test_every_exception_gets_exactly_one_category(exc: BaseException) -> None:
    category = classify_error(exc)
    assert isinstance(category, ErrorCategory)
    assert classify_error(exc) is category  # and always the same one
    hint = retry_after_hint(exc, now=NOW)
    assert hint is None or (math.isfinite(hint) and hint >= 0)


@given(exceptions())
def test_wrapping_without_a_category_keeps_the_category(exc: BaseException) -> None:
    wrapper = RuntimeError("wrapped by application code")
    wrapper.__cause__ = exc
    assert classify_error(wrapper) is classify_error(exc)
    if isinstance(exc, Exception):
        assert classify_error(ExceptionGroup("one", [exc])) is classify_error(exc)


@given(st.text(max_size=60))
def test_any_retry_after_header_parses_to_nothing_or_a_delay(value: str) -> None:
    parsed = parse_retry_after(value, NOW)
    assert parsed is None or (math.isfinite(parsed) and parsed >= 0)
