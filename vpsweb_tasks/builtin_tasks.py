"""Built-in task types that look after the system's own database.

* ``cleanup``: delete finished tasks older than the retention period
  (payload ``retention_hours`` overrides ``task_retention_hours``).
* ``maintenance``: checkpoint the WAL, refresh planner statistics, check integrity, and
  with payload ``vacuum: true`` reclaim free space.
* ``backup``: write a consistent copy of the database to payload ``path`` (default
  ``backups/vpsweb_tasks-<UTC time>.db``) while tasks keep running.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .context import TaskContext

if TYPE_CHECKING:
    from .manager import TaskManager

__all__ = ["register_builtin_tasks"]


def register_builtin_tasks(manager: TaskManager) -> None:
    async def cleanup(context: TaskContext) -> dict[str, Any]:
        hours = context.payload.get("retention_hours")
        if hours is not None and (not isinstance(hours, int | float) or hours <= 0):
            raise ValueError("retention_hours must be a positive number")
        await context.update_progress(0.1, "deleting finished tasks past retention")
        deleted = await manager.cleanup(retention_hours=hours)
        await context.update_progress(1.0, f"deleted {deleted} tasks")
        return {
            "deleted": deleted,
            "retention_hours": hours or manager.config.task_retention_hours,
        }

    async def maintenance(context: TaskContext) -> dict[str, Any]:
        vacuum = bool(context.payload.get("vacuum", False))
        await context.update_progress(0.1, "checkpoint, analyze" + (", vacuum" if vacuum else ""))
        report = await manager.store.maintenance(vacuum=vacuum)
        await context.update_progress(1.0, f"integrity {report.get('integrity')}")
        return report

    async def backup(context: TaskContext) -> dict[str, Any]:
        path = context.payload.get("path")
        if path is None:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            path = f"backups/vpsweb_tasks-{stamp}.db"
        if not isinstance(path, str) or not path:
            raise ValueError("path must be a non-empty string")
        await context.update_progress(0.1, f"copying the database to {path}")
        report = await manager.store.backup(path)
        await context.update_progress(1.0, f"backed up {report['tasks']} tasks")
        return report

    manager.register("cleanup", cleanup)
    manager.register("maintenance", maintenance)
    manager.register("backup", backup)
