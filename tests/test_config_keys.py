"""The task_monitoring keys that switch logging and metrics do what
docs/configuration.md says, and every config key is read by the code."""

from __future__ import annotations

import ast
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import BaseModel

import vpsweb_tasks
import vpsweb_tasks_http
from vpsweb_tasks import TaskContext, TaskDefinition, TaskManager
from vpsweb_tasks.config import Settings
from vpsweb_tasks.monitor import TaskMonitor

pytestmark = pytest.mark.anyio


async def run_tasks(manager: TaskManager, *, fail: bool = False) -> list[str]:
    """Runs one task that reports progress (and one that fails for good if ``fail``);
    their ids."""

    @manager.task("steps")
    async def steps(context: TaskContext) -> str:
        await context.update_progress(0.5, "halfway there")
        return "done"

    @manager.task("broken")
    async def broken(context: TaskContext) -> None:
        raise ValueError("bad input")

    ids = []
    context = await manager.submit(TaskDefinition(name="s", task_type="steps"))
    await context.wait(timeout=10)
    ids.append(context.task_id)
    if fail:
        context = await manager.submit(TaskDefinition(name="b", task_type="broken", max_retries=0))
        await context.wait(timeout=10)
        ids.append(context.task_id)
    return ids


def lines_about(caplog: pytest.LogCaptureFixture, task_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if f"task_id:{task_id}" in r.getMessage()]


@pytest.mark.parametrize("track", [True, False])
async def test_track_task_lifecycle(
    track: bool, settings_factory: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vpsweb_tasks")
    settings = settings_factory(task_monitoring={"track_task_lifecycle": track})
    async with TaskManager(settings) as manager:
        ok, failed = await run_tasks(manager, fail=True)
    info = {r.getMessage().split(" ", 1)[1] for r in lines_about(caplog, ok)}
    lifecycle = {"submitted", "started", "completed"}
    seen = {word for word in lifecycle if any(line.startswith(word) for line in info)}
    assert seen == (lifecycle if track else set())
    # A failure is not lifecycle chatter: it is logged either way.
    errors = [r for r in lines_about(caplog, failed) if r.levelno >= logging.ERROR]
    assert any("bad input" in r.getMessage() for r in errors)


@pytest.mark.parametrize("tracing", [True, False])
async def test_enable_task_tracing(
    tracing: bool, settings_factory: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vpsweb_tasks")
    settings = settings_factory(task_monitoring={"enable_task_tracing": tracing})
    async with TaskManager(settings) as manager:
        [task_id] = await run_tasks(manager)
    progress = [r for r in lines_about(caplog, task_id) if "halfway there" in r.getMessage()]
    if tracing:
        [line] = progress
        assert "50.0%" in line.getMessage()
    else:
        assert progress == []


@pytest.mark.parametrize("enabled", [True, False])
async def test_enable_task_metrics(
    enabled: bool, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory(task_monitoring={"enable_task_metrics": enabled})
    async with TaskManager(settings) as manager:
        await run_tasks(manager, fail=True)
        async with TaskMonitor(manager) as monitor:
            stats = await monitor.statistics()
    assert stats.task_metrics is enabled
    assert stats.counts["completed"] == 1  # tasks now: counted either way
    if enabled:
        assert (stats.attempts, stats.completed, stats.failed_attempts) == (2, 1, 1)
        assert stats.average_duration is not None
    else:  # nothing was recorded
        assert (stats.attempts, stats.completed, stats.failed_attempts) == (0, 0, 0)
        assert stats.average_duration is None


def section_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += section_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def attributes_read(tree: ast.AST) -> set[str]:
    return {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}


def test_every_config_key_is_read_outside_config_py() -> None:
    """A key that validates and is documented but that no code reads is a lie: each key's
    name must be read as an attribute (``settings.section.key``) somewhere in the packages
    other than config.py."""
    read: set[str] = set()
    config_py = Path(vpsweb_tasks.__file__).parent / "config.py"
    for package in (vpsweb_tasks, vpsweb_tasks_http):
        for path in Path(package.__file__).parent.rglob("*.py"):
            if path != config_py:
                read |= attributes_read(ast.parse(path.read_text(), str(path)))
    # A helper method of a section (``timeout_for``) reads keys for the code calling it.
    for node in ast.walk(ast.parse(config_py.read_text())):
        if isinstance(node, ast.FunctionDef) and node.name in read:
            read |= attributes_read(node)
    unread = [key for key in section_keys(Settings) if key.rsplit(".", 1)[-1] not in read]
    assert unread == []
