"""Task handlers of the tracing test's worker process (``vpsweb-tasks worker --import
tests.otel_worker``): it exports its spans to ``$OTEL_SPANS_FILE`` (tests/otel_support.py).
"""

from __future__ import annotations

import os

from opentelemetry import trace

from vpsweb_tasks import TaskContext, get_task_manager

from .otel_support import install_file_exporter

install_file_exporter(os.environ["OTEL_SPANS_FILE"])
manager = get_task_manager()


@manager.task("traced")
async def traced(context: TaskContext) -> str:
    """Makes a span of its own: it must be a child of the attempt's span."""
    with trace.get_tracer("tests").start_as_current_span("inside the task"):
        return context.task_id
