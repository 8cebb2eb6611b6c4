"""The built-in task types do real work on the system's own database."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from vpsweb_tasks import TaskContext, TaskDefinition, TaskManager, TaskStatus
from vpsweb_tasks.config import Settings

from .conftest import FakeClock

pytestmark = pytest.mark.anyio


async def test_cleanup_deletes_finished_tasks_past_retention(
    settings_factory: Callable[..., Settings], clock: FakeClock
) -> None:
    settings = settings_factory(background_tasks={"task_retention_hours": 24})
    async with TaskManager(settings, clock=clock) as manager:

        @manager.task("work")
        async def work(context: TaskContext) -> None:
            return None

        old = await (await manager.submit(TaskDefinition(name="old", task_type="work"))).wait(10)
        clock.advance(25 * 3600)
        fresh = await (await manager.submit(TaskDefinition(name="new", task_type="work"))).wait(10)
        report = await (await manager.submit(TaskDefinition(name="c", task_type="cleanup"))).wait(
            10
        )
        assert report.status is TaskStatus.COMPLETED
        assert report.result == {"deleted": 1, "retention_hours": 24}
        ids = {t.id for t in await manager.list_tasks()}
    assert old.id not in ids
    assert fresh.id in ids


async def test_cleanup_rejects_a_bad_retention(manager: TaskManager) -> None:
    definition = TaskDefinition(name="c", task_type="cleanup")
    record = await (await manager.submit(definition, retention_hours="soon")).wait(10)
    assert (record.status, record.error_category) == (TaskStatus.FAILED, "validation")


async def test_maintenance_checkpoints_analyzes_and_vacuums(
    manager: TaskManager, tmp_path: Path
) -> None:
    definition = TaskDefinition(name="m", task_type="maintenance")
    record = await (await manager.submit(definition, vacuum=True)).wait(10)
    assert record.status is TaskStatus.COMPLETED
    assert record.result["integrity"] == "ok"
    assert record.result["vacuumed"] is True
    with sqlite3.connect(tmp_path / "tasks.db") as db:
        assert db.execute("SELECT count(*) FROM sqlite_stat1").fetchone()[0] > 0


async def test_backup_writes_a_consistent_copy_while_in_use(
    manager: TaskManager, tmp_path: Path
) -> None:
    target = tmp_path / "backups" / "copy.db"
    definition = TaskDefinition(name="b", task_type="backup")
    record = await (await manager.submit(definition, path=str(target))).wait(10)
    assert record.status is TaskStatus.COMPLETED
    assert record.result["integrity"] == "ok"
    with sqlite3.connect(target) as copy:
        (journal,) = copy.execute("PRAGMA integrity_check").fetchone()
        ids = {row[0] for row in copy.execute("SELECT id FROM background_tasks")}
    assert journal == "ok"
    assert record.id in ids  # the backup task itself was running when copied
