"""OpenTelemetry's SDK for the tracing tests: a tracer provider installed for one test and
removed after it, and an exporter a worker process writes its spans with.

A worker process (``vpsweb-tasks worker --import tests.otel_worker``) installs a provider
whose exporter appends each finished span to the file named by ``$OTEL_SPANS_FILE``, one
JSON line (one ``os.write`` to an ``O_APPEND`` file); the test reads them back with
:func:`read_spans`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once


def span_dict(span: ReadableSpan) -> dict[str, Any]:
    """What a test reads of a span: names, ids (hex), kind, status, attributes, events."""
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": None if span.parent is None else f"{span.parent.span_id:016x}",
        "kind": span.kind.name,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "events": [
            {"name": event.name, "attributes": dict(event.attributes or {})}
            for event in span.events
        ],
        "pid": os.getpid(),
    }


class JsonLinesExporter(SpanExporter):
    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_dict(span), default=list) + "\n" for span in spans)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, lines.encode())
        finally:
            os.close(fd)
        return SpanExportResult.SUCCESS


def read_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _set_global(provider: trace.TracerProvider | None) -> None:
    # The API lets a process set its provider once; a test sets one and takes it away.
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    if provider is not None:
        trace.set_tracer_provider(provider)


@contextmanager
def installed_provider() -> Iterator[InMemorySpanExporter]:
    """An SDK tracer provider, with an in-memory exporter, as the global one while the
    block runs."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _set_global(provider)
    try:
        yield exporter
    finally:
        _set_global(None)
        provider.shutdown()


def install_file_exporter(path: str) -> None:
    """For a worker process: export every span to ``path`` as a JSON line."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(path)))
    trace.set_tracer_provider(provider)
