"""OpenTelemetry traces, with the ``otel`` extra (``pip install 'vpsweb-tasks[otel]'``).

The library uses the OpenTelemetry API only; the application installs the SDK and its
exporters (``TracerProvider``, ``set_tracer_provider``), as for any instrumented library.
Then it gets:

* a ``submit <task_type>`` span (kind PRODUCER) around each submit, in the caller's trace
  (the current span: a web request's, ...; FastAPI, from 0.165, makes a server span per
  request in the trace its ``traceparent`` header names). The span's context is **stored
  with each task** (column
  ``trace_context``: the propagator's fields, W3C ``traceparent`` by default);
* a ``run <task_type>`` span (kind CONSUMER) around each attempt, in whichever worker
  process claims it: a child of the submit span, so one trace holds the request, the
  submit and every attempt. A failed attempt has status ERROR, ``error.type`` (the
  exception's class), ``vpsweb_tasks.error.category`` and an ``exception`` event;
* spans of the work inside (the translation steps' ``chat <model>`` spans, with the GenAI
  semantic conventions' attributes, and the application's own) as children of the attempt.

Attributes follow the messaging semantic conventions where they fit (``messaging.system``
``vpsweb_tasks``, ``messaging.operation.name`` ``send`` / ``process``,
``messaging.destination.name`` the task type, ``messaging.message.id`` the task id), plus
``vpsweb_tasks.task.id``, ``vpsweb_tasks.task.type``, ``vpsweb_tasks.task.attempt``,
``vpsweb_tasks.worker.id``, ``vpsweb_tasks.outcome``.

Cost: without opentelemetry-api nothing is imported (one failed import, once) and every
hook is a constant no-op. With the API but no SDK provider installed (the API alone is a
dependency of FastAPI) the hooks see that no provider is set, in one check, and do nothing
either: no span, no context stored.
"""

from __future__ import annotations

import contextvars
import importlib.metadata
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from .classify import classify_error
from .storage.types import Failed

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from .models import TaskRecord
    from .storage.types import Outcome

__all__ = [
    "Attempt",
    "LlmCall",
    "attempt",
    "carrier",
    "current_ids",
    "enabled",
    "llm_call",
    "submitting",
]

SYSTEM: Final = "vpsweb_tasks"


class Attempt:
    """The span of one attempt; :meth:`ended` records its outcome. The base class is the
    no-op one (no tracing)."""

    recording: bool = False
    """Whether a span records the attempt (its outcome must be given to :meth:`ended`)."""

    def ended(self, outcome: Outcome | None, record: TaskRecord | None) -> None:
        """The attempt's outcome (None: none was written, a lost lease)."""


class LlmCall:
    """The span of one chat completion; the base class is the no-op one."""

    def answered(self, *, model: str, input_tokens: int | None, output_tokens: int | None) -> None:
        """What the provider answered: the model that answered and the tokens it reported
        (None: not reported)."""


_NO_ATTEMPT: Final = Attempt()
_NO_CALL: Final = LlmCall()
_NOTHING: Final[AbstractContextManager[None]] = nullcontext()
_NO_ATTEMPT_SPAN: Final[AbstractContextManager[Attempt]] = nullcontext(_NO_ATTEMPT)
_NO_CALL_SPAN: Final[AbstractContextManager[LlmCall]] = nullcontext(_NO_CALL)


class _Otel:
    """The API's modules, imported once, and the tracer of the provider in place."""

    def __init__(self) -> None:
        from opentelemetry import propagate, trace

        self.propagate = propagate
        self.trace = trace
        self._unset = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
        self._from_environment = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
        self._provider: TracerProvider | None = None
        self._tracer: Tracer | None = None
        #: The ids of the tasks of the submit span in place (set by ``submitting``).
        self.submitted: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
            "vpsweb_tasks_submitted", default=None
        )

    def tracer(self) -> Tracer | None:
        """The tracer of the provider the application installed; None while none is."""
        # get_tracer_provider() reads os.environ on every call while no provider is set
        # (a hot path: see benchmarks/README.md): read the API's global first.
        found = getattr(self.trace, "_TRACER_PROVIDER", self)
        if found is None and not self._from_environment:
            return None
        if isinstance(found, self.trace.TracerProvider):
            provider = found
        else:  # the API changed, or $OTEL_PYTHON_TRACER_PROVIDER names one
            provider = self.trace.get_tracer_provider()
        if isinstance(provider, self._unset):
            return None
        if provider is not self._provider:
            self._provider = provider
            self._tracer = provider.get_tracer(SYSTEM, _version())
        return self._tracer


def _version() -> str | None:
    try:
        return importlib.metadata.version("vpsweb-tasks")
    except importlib.metadata.PackageNotFoundError:
        return None


_otel: _Otel | None = None
_loaded = False


def _api() -> _Otel | None:
    global _otel, _loaded
    if not _loaded:
        _loaded = True
        try:
            _otel = _Otel()
        except ImportError:
            _otel = None
    return _otel


def _tracer() -> tuple[_Otel, Tracer] | None:
    api = _otel if _loaded else _api()
    if api is None:
        return None
    tracer = api.tracer()
    return None if tracer is None else (api, tracer)


def enabled() -> bool:
    """Whether spans are made: opentelemetry-api is installed and the application set a
    tracer provider."""
    return _tracer() is not None


# --- submit --------------------------------------------------------------------------------


def submitting(task_types: Sequence[str]) -> AbstractContextManager[None]:
    """The span of one submit (of one task, or a batch of ``len(task_types)``), current
    while the tasks are prepared and stored."""
    found = _tracer()
    if found is None:
        return _NOTHING
    return _submit_span(*found, task_types)


@contextmanager
def _submit_span(api: _Otel, tracer: Tracer, task_types: Sequence[str]) -> Iterator[None]:
    kinds = sorted(set(task_types))
    name = f"submit {kinds[0]}" if len(kinds) == 1 else "submit"
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": ",".join(kinds),
    }
    if len(task_types) > 1:
        attributes["messaging.batch.message_count"] = len(task_types)
    ids: list[str] = []
    with tracer.start_as_current_span(
        name, kind=api.trace.SpanKind.PRODUCER, attributes=attributes
    ) as span:
        token = api.submitted.set(ids)
        try:
            yield
        finally:
            api.submitted.reset(token)
            if len(ids) == 1:
                span.set_attribute("messaging.message.id", ids[0])
                span.set_attribute("vpsweb_tasks.task.id", ids[0])
            elif ids:
                span.set_attribute("vpsweb_tasks.task.ids", ids)


def carrier(task_id: str) -> dict[str, str] | None:
    """The trace context to store with a new task: the current span's (a submit span's,
    see :func:`submitting`), as the propagator's fields; None when there is no trace (or
    no tracer provider in this process)."""
    found = _tracer()
    if found is None:
        return None
    api = found[0]
    if not api.trace.get_current_span().get_span_context().is_valid:
        return None
    ids = api.submitted.get()
    if ids is not None:
        ids.append(task_id)
    fields: dict[str, str] = {}
    api.propagate.inject(fields)
    return fields or None


# --- attempts ------------------------------------------------------------------------------


def attempt(task: TaskRecord, worker_id: str) -> AbstractContextManager[Attempt]:
    """The span of one attempt of ``task``, current while it runs: a child of the span
    its submit stored, or a new trace's root."""
    found = _tracer()
    if found is None:
        return _NO_ATTEMPT_SPAN
    return _attempt_span(*found, task, worker_id)


class _Attempt(Attempt):
    recording = True

    def __init__(self, span: Span, trace: Any) -> None:
        self.span = span
        self.trace = trace

    def ended(self, outcome: Outcome | None, record: TaskRecord | None) -> None:
        name = "lost" if outcome is None else type(outcome).__name__.lower()
        self.span.set_attribute("vpsweb_tasks.outcome", name)
        if isinstance(outcome, Failed):
            self.span.set_attribute("error.type", outcome.error_type)
            self.span.set_attribute("vpsweb_tasks.error.category", outcome.category.value)
            retrying = record is not None and record.status.is_waiting
            self.span.set_attribute("vpsweb_tasks.will_retry", retrying)
            self.span.add_event(
                "exception",
                {
                    "exception.type": outcome.error_type,
                    "exception.message": outcome.error_message,
                    "exception.stacktrace": outcome.traceback or "",
                },
            )
            self.span.set_status(
                self.trace.Status(self.trace.StatusCode.ERROR, outcome.error_message)
            )


@contextmanager
def _attempt_span(
    api: _Otel, tracer: Tracer, task: TaskRecord, worker_id: str
) -> Iterator[Attempt]:
    parent = None if task.trace_context is None else api.propagate.extract(task.trace_context)
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": task.task_type,
        "messaging.message.id": task.id,
        "vpsweb_tasks.task.id": task.id,
        "vpsweb_tasks.task.type": task.task_type,
        "vpsweb_tasks.task.attempt": task.attempts,
        "vpsweb_tasks.worker.id": worker_id,
    }
    with tracer.start_as_current_span(
        f"run {task.task_type}",
        context=parent,
        kind=api.trace.SpanKind.CONSUMER,
        attributes=attributes,
    ) as span:
        yield _Attempt(span, api.trace)


# --- LLM calls ------------------------------------------------------------------------------


def llm_call(
    *,
    provider: str,
    model: str,
    url: str,
    temperature: float | None = None,
    max_tokens: int | None = None,
    step: str | None = None,
) -> AbstractContextManager[LlmCall]:
    """The span of one chat completion, with the GenAI semantic conventions' attributes
    (https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/): ``chat <model>``,
    kind CLIENT. An error leaving the block is recorded (``error.type``, status ERROR)."""
    found = _tracer()
    if found is None:
        return _NO_CALL_SPAN
    api, tracer = found
    where = urlsplit(url)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
    }
    if temperature is not None:
        attributes["gen_ai.request.temperature"] = temperature
    if max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = max_tokens
    if where.hostname:
        attributes["server.address"] = where.hostname
        attributes["server.port"] = where.port or (443 if where.scheme == "https" else 80)
    if step is not None:
        attributes["vpsweb_tasks.translation.step"] = step
    return _llm_span(api, tracer, f"chat {model}", attributes)


class _LlmCall(LlmCall):
    def __init__(self, span: Span) -> None:
        self.span = span

    def answered(self, *, model: str, input_tokens: int | None, output_tokens: int | None) -> None:
        self.span.set_attribute("gen_ai.response.model", model)
        if input_tokens is not None:
            self.span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
        if output_tokens is not None:
            self.span.set_attribute("gen_ai.usage.output_tokens", output_tokens)


@contextmanager
def _llm_span(
    api: _Otel, tracer: Tracer, name: str, attributes: Mapping[str, Any]
) -> Iterator[LlmCall]:
    with tracer.start_as_current_span(
        name, kind=api.trace.SpanKind.CLIENT, attributes=attributes
    ) as span:
        try:
            yield _LlmCall(span)
        except Exception as exc:
            span.set_attribute("error.type", type(exc).__qualname__)
            span.set_attribute("vpsweb_tasks.error.category", classify_error(exc).value)
            raise


# --- context for logs --------------------------------------------------------


def current_ids() -> tuple[str, str] | None:
    """The current span's trace id and span id (hex), for log lines; None outside a
    trace or without opentelemetry-api."""
    api = _otel if _loaded else _api()
    if api is None:
        return None
    context = api.trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"
