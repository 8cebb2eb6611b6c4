"""The library's exceptions as HTTP answers, and how the routes document them.

Unknown id 404, wrong state 409, invalid input 422 naming the field, queue full 429 with
``Retry-After``, not started (or translations not configured) 503, a storage fault (the
database cannot take the write now: ``cause`` disk_full, read_only, locked, corrupt,
unavailable) 503 with ``Retry-After``. The route class of
:mod:`.deps` answers :data:`LIBRARY_ERRORS` with :func:`error_response`; each route carries
it, so the mapping also works in an app that is not ours (no exception handler on the
host app).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import ValidationError

from vpsweb_tasks.errors import (
    HandlerUnavailableError,
    IdempotencyKeyError,
    ManagerNotRunningError,
    NotConfiguredError,
    QueueFullError,
    StorageUnavailableError,
    TaskNotFoundError,
    TaskStateError,
    UnknownTaskTypeError,
)

from .schemas import ErrorResponse

__all__ = ["GUARDED_RESPONSES", "LIBRARY_ERRORS", "OPEN_RESPONSES", "error_response"]

#: The exceptions :func:`error_response` answers.
LIBRARY_ERRORS: tuple[type[Exception], ...] = (
    TaskNotFoundError,
    TaskStateError,
    QueueFullError,
    UnknownTaskTypeError,
    ManagerNotRunningError,
    NotConfiguredError,
    ValidationError,
    HandlerUnavailableError,
    StorageUnavailableError,
    IdempotencyKeyError,
)

#: The documented error answers of the open routes (the health checks).
OPEN_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {
        "model": ErrorResponse,
        "description": "The task manager is not running, or the task database cannot take"
        " this now (its cause named, with Retry-After)",
    },
}

#: The documented error answers of the routes behind the API key.
GUARDED_RESPONSES: dict[int | str, dict[str, Any]] = {
    **OPEN_RESPONSES,
    401: {"model": ErrorResponse, "description": "Missing or wrong X-API-Key"},
    404: {"model": ErrorResponse, "description": "No task with that id"},
    409: {"model": ErrorResponse, "description": "The task's status does not allow this"},
    429: {"model": ErrorResponse, "description": "The queue is full; retry after Retry-After"},
}


def _detail(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def _invalid(kind: str, loc: list[str], exc: Exception, given: Any, **ctx: Any) -> JSONResponse:
    """A 422 in FastAPI's validation shape: one error at ``loc``."""
    detail = [{"type": kind, "loc": loc, "msg": str(exc), "input": given, "ctx": ctx}]
    return JSONResponse({"detail": detail}, status_code=422)


def error_response(
    exc: Exception, *, retry_after: int, storage_retry_after: int = 5
) -> JSONResponse:
    """The answer to one of :data:`LIBRARY_ERRORS` (tested in this order: the first class
    that matches wins). ``retry_after``: the seconds a 429 asks the client to wait;
    ``storage_retry_after``: those of a 503 for a storage fault."""
    match exc:
        case TaskNotFoundError():
            return _detail(404, str(exc))
        case TaskStateError():
            return _detail(409, str(exc))
        case QueueFullError():
            return _detail(429, str(exc), {"Retry-After": str(retry_after)})
        case IdempotencyKeyError():
            where = ["header", "Idempotency-Key"]
            return _invalid("idempotency_key_reused", where, exc, exc.key, task_id=exc.task_id)
        case UnknownTaskTypeError():
            where = ["body", "task_type"]
            return _invalid(
                "unknown_task_type", where, exc, exc.task_type, registered=exc.registered
            )
        case ManagerNotRunningError():
            return _detail(503, str(exc))
        case NotConfiguredError():
            return JSONResponse({"detail": str(exc), "problems": exc.problems}, status_code=503)
        case ValidationError():
            # Models validated inside a call (e.g. one request per mode of a compare): the
            # body is what was invalid.
            errors = json.loads(exc.json(include_url=False, include_context=False))
            invalid = [{**error, "loc": ["body", *error["loc"]]} for error in errors]
            return JSONResponse({"detail": invalid}, status_code=422)
        case HandlerUnavailableError():
            return _detail(409, str(exc))
        case StorageUnavailableError():
            return JSONResponse(
                {"detail": str(exc), "cause": exc.cause.value},
                status_code=503,
                headers={"Retry-After": str(storage_retry_after)},
            )
    raise TypeError(f"not a library error: {exc!r}")  # pragma: no cover
