"""Every log line about a task carries task_id:<id>, in the configured file; as fields
(with the task type, the attempt and the trace) in JSON lines."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from opentelemetry import trace

from vpsweb_tasks import TaskContext, TaskDefinition, TaskManager
from vpsweb_tasks.config import LoggingSettings, Settings, load_config
from vpsweb_tasks.errors import ConfigError
from vpsweb_tasks.log import JsonFormatter, formatter

from .otel_support import installed_provider

pytestmark = pytest.mark.anyio

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


async def test_every_line_about_a_task_names_it(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    log_file = tmp_path / "custom" / "tasks.log"
    async with TaskManager(settings_factory(logging={"file": str(log_file)})) as manager:

        @manager.task("flaky")
        async def flaky(context: TaskContext) -> None:
            if context.attempt == 1:
                raise ConnectionError("refused")
            context.logger.info("user code says hello")

        context = await manager.submit(TaskDefinition(name="f", task_type="flaky"))
        await context.wait(timeout=10)
    lines = log_file.read_text().splitlines()
    about_it = [line for line in lines if context.task_id in line]
    assert len(about_it) >= 5  # submitted, started, failed + retry, started, completed
    for line in lines:
        for task_id in re.findall(UUID, line):
            assert f"task_id:{task_id}" in line, line
    assert any("user code says hello" in line for line in about_it)
    assert any("failed (network)" in line for line in about_it)


async def test_no_log_file_when_disabled(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    async with TaskManager(settings_factory(logging={"file": None})):
        pass
    assert not (tmp_path / "logs").exists()


async def test_json_lines_carry_the_task_and_its_trace_as_fields(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    log_file = tmp_path / "tasks.jsonl"
    settings = settings_factory(logging={"file": str(log_file), "format": "json"})
    with installed_provider() as spans:
        async with TaskManager(settings) as manager:

            @manager.task("flaky")
            async def flaky(context: TaskContext) -> None:
                context.logger.info("user code says hello")
                if context.attempt == 1:
                    raise ConnectionError("refused")

            with trace.get_tracer("tests").start_as_current_span("caller"):
                context = await manager.submit(TaskDefinition(name="f", task_type="flaky"))
            await context.wait(timeout=10)
        attempts = {
            span.attributes["vpsweb_tasks.task.attempt"]: span.get_span_context()
            for span in spans.get_finished_spans()
            if span.name == "run flaky" and span.attributes is not None
        }
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    about_it = [line for line in lines if line.get("task_id") == context.task_id]
    for line in lines:
        assert {"time", "level", "logger", "message", "process"} <= line.keys()
        assert "task_id:" not in line["message"], line  # a field, not a prefix
    (submitted,) = [line for line in about_it if line["message"].startswith("submitted")]
    assert submitted["task_type"] == "flaky"
    hellos = [line for line in about_it if line["message"] == "user code says hello"]
    assert [line["attempt"] for line in hellos] == [1, 2]
    (failed,) = [line for line in about_it if line["level"] == "WARNING"]
    assert failed["message"].startswith("attempt 1 failed (network) ConnectionError: refused")
    (completed,) = [line for line in about_it if line["message"].startswith("completed")]
    for line, attempt in [(hellos[0], 1), (failed, 1), (hellos[1], 2), (completed, 2)]:
        assert line["task_type"] == "flaky"
        assert line["attempt"] == attempt
        assert line["trace_id"] == f"{attempts[attempt].trace_id:032x}"
        assert line["span_id"] == f"{attempts[attempt].span_id:016x}"


def test_text_stays_the_default_and_json_renders_exceptions() -> None:
    assert LoggingSettings().format == "text"
    with pytest.raises(ConfigError, match=r"logging\.format"):
        load_config(logging={"format": "yaml"})
    text = formatter(LoggingSettings(), "%(message)s")
    assert not isinstance(text, JsonFormatter)
    record = logging.LogRecord(
        "vpsweb_tasks.x", logging.ERROR, __file__, 1, "boom %s", ("!",), None
    )
    try:
        raise RuntimeError("inner")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    line = json.loads(formatter(LoggingSettings(format="json")).format(record))
    assert line["message"] == "boom !"
    assert line["level"] == "ERROR"
    assert "RuntimeError: inner" in line["exception"]
    assert "task_id" not in line
    assert "trace_id" not in line
