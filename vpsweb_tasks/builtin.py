"""Built-in task types that look after the system's own database.

* ``cleanup``: delete finished tasks older than the retention period
  (payload ``retention_hours`` overrides ``task_retention_hours``).
* ``maintenance``: checkpoint the WAL, refresh planner statistics, check integrity, and
  with payload ``vacuum: true`` reclaim free space.
* ``backup``: write a consistent copy of the database to payload ``path`` (default
  ``backups/vpsweb_tasks-<UTC time>.db``) while tasks keep running.
* ``data_processing``: convert a table file between CSV, JSON and JSON lines (see
  :func:`data_processing`; the design document's submit example uses it).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio.to_thread

from .config import BackgroundTaskSettings
from .context import TaskContext, TaskFunction
from .storage.base import TaskStore

__all__ = ["builtin_tasks"]


def builtin_tasks(
    *,
    store: TaskStore,
    cleanup: Callable[..., Awaitable[int]],
    settings: BackgroundTaskSettings,
) -> dict[str, TaskFunction]:
    """The built-in task types, by name, working on ``store``. ``cleanup(retention_hours=)``
    deletes finished tasks past the retention period (the manager's)."""

    async def run_cleanup(context: TaskContext) -> dict[str, Any]:
        hours = context.payload.get("retention_hours")
        if hours is not None and (not isinstance(hours, int | float) or hours <= 0):
            raise ValueError("retention_hours must be a positive number")
        await context.update_progress(0.1, "deleting finished tasks past retention")
        deleted = await cleanup(retention_hours=hours)
        await context.update_progress(1.0, f"deleted {deleted} tasks")
        return {"deleted": deleted, "retention_hours": hours or settings.task_retention_hours}

    async def maintenance(context: TaskContext) -> dict[str, Any]:
        vacuum = bool(context.payload.get("vacuum", False))
        await context.update_progress(0.1, "checkpoint, analyze" + (", vacuum" if vacuum else ""))
        report = await store.maintenance(vacuum=vacuum)
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
        report = await store.backup(path)
        await context.update_progress(1.0, f"backed up {report['tasks']} tasks")
        return report

    return {
        "cleanup": run_cleanup,
        "maintenance": maintenance,
        "backup": backup,
        "data_processing": data_processing(settings.data_dir),
    }


# --- data_processing ------------------------------------------------------------------------

_FORMATS = ("json", "csv", "jsonl")


def _locate(data_dir: Path, name: object) -> tuple[Path, Path]:
    """The data folder and the source file in it; refuses anything outside it."""
    if not isinstance(name, str) or not name:
        raise ValueError("source_file must be a non-empty file name")
    folder = data_dir.resolve()
    path = (folder / name).resolve()
    if not path.is_relative_to(folder):
        raise ValueError(f"source_file {name!r} is outside the data folder")
    if not path.is_file():
        raise ValueError(f"source_file {name!r} does not exist in {folder}")
    return folder, path


def _read_rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":
        return list(csv.DictReader(io.StringIO(text)))
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    rows = json.loads(text)
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"{path.name} must hold a JSON array of objects")
    return rows


def _write_rows(rows: list[dict[str, Any]], path: Path, output_format: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8", newline="") as out:
        if output_format == "json":
            json.dump(rows, out, ensure_ascii=False, indent=1)
        elif output_format == "jsonl":
            out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        else:
            columns = list(dict.fromkeys(key for row in rows for key in row))
            writer = csv.DictWriter(out, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    partial.replace(path)


def data_processing(data_dir: Path) -> TaskFunction:
    """``data_processing``: convert a table file in ``data_dir`` (``background_tasks.data_dir``)
    between CSV, JSON (array of objects) and JSON lines. Takes ``source_file`` and
    ``output_format`` from the payload or the metadata (as the design document's submit
    example sends them); writes ``<data_dir>/output/<stem>.<format>``."""

    async def run(context: TaskContext) -> dict[str, Any]:
        spec = {**context.definition.metadata, **context.payload}
        folder, source = await anyio.to_thread.run_sync(_locate, data_dir, spec.get("source_file"))
        output_format = spec.get("output_format", "json")
        if output_format not in _FORMATS:
            raise ValueError(f"output_format must be one of {', '.join(_FORMATS)}")
        await context.update_progress(0.1, f"reading {source.name}")
        rows = await anyio.to_thread.run_sync(_read_rows, source)
        await context.update_progress(0.5, f"read {len(rows)} rows; writing {output_format}")
        target = folder / "output" / f"{source.stem}.{output_format}"
        await anyio.to_thread.run_sync(_write_rows, rows, target, output_format)
        await context.update_progress(1.0, f"wrote {target.name}")
        return {
            "rows": len(rows),
            "source_file": source.name,
            "output_file": str(target.relative_to(folder)),
            "output_format": output_format,
        }

    return run
