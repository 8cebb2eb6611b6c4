"""Every log line about a task carries task_id:<id>, in the configured file."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from vpsweb_tasks import TaskContext, TaskDefinition, TaskManager
from vpsweb_tasks.config import Settings

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
