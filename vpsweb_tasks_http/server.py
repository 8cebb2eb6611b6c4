"""Run the API, workers, monitor (and dashboard) in one process with uvicorn."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from typing import Literal

import anyio
import uvicorn

from vpsweb_tasks import Settings, TaskManager, set_task_manager
from vpsweb_tasks.manager import Extension
from vpsweb_tasks.translation import TranslationExtension

from .app import create_app

__all__ = ["check_storage", "serve"]


def check_storage(manager: TaskManager) -> None:
    """Open the manager's store once (its startup check and migrations) and close it, so
    a damaged or unusable database stops :func:`serve` with the library's one error
    (:class:`~vpsweb_tasks.errors.StorageError` naming the database) before uvicorn
    starts: an error in the app's lifespan would come out of uvicorn as a traceback."""

    async def check() -> None:
        async with manager.store:
            pass

    anyio.run(check, backend="asyncio")


def serve(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    imports: Sequence[str] = (),
    loop: Literal["auto", "asyncio", "uvloop"] = "auto",
    extensions: Sequence[Extension] | None = None,
) -> None:
    """Serve until interrupted. Modules in ``imports`` are imported after the process-wide
    manager is set, so their ``@get_task_manager().task("name")`` decorators register on
    it. Binds ``http.host`` (127.0.0.1 by default) unless told otherwise. ``loop`` is
    uvicorn's: ``auto`` takes uvloop when it is installed. ``extensions`` are installed on
    the manager (default: the translation extension)."""
    if extensions is None:
        extensions = [TranslationExtension()]
    manager = TaskManager(settings, extensions=extensions)
    set_task_manager(manager)
    for module in imports:
        importlib.import_module(module)
    check_storage(manager)
    app = create_app(settings, manager=manager)
    logging.getLogger("vpsweb_tasks").info(
        "serving on http://%s:%s with task types: %s",
        host or settings.http.host,
        port if port is not None else settings.http.port,
        ", ".join(manager.task_types),
    )
    uvicorn.run(
        app,
        host=host or settings.http.host,
        port=port if port is not None else settings.http.port,
        log_level="info",
        loop=loop,
        timeout_graceful_shutdown=int(settings.background_tasks.shutdown_grace_period) + 5,
    )
