"""The library's exceptions as HTTP answers, and how the routes document them.

Unknown id 404, wrong state 409, invalid input 422 naming the field, queue full 429 with
``Retry-After``, not started (or translations not configured) 503, a storage fault (the
database cannot take the write now: ``cause`` disk_full, read_only, locked, corrupt,
unavailable) 503 with ``Retry-After``. The route class of :mod:`.deps` answers
:data:`LIBRARY_ERRORS` with :func:`error_response`, and invalid requests (parameters and
bodies that fail validation, bodies that cannot be parsed) with
:func:`validation_error_response`; each route carries it, so the mapping also works in an
app that is not ours (no exception handler on the host app).

A 422 echoes the input it rejects, and that input may be anything a JSON parser lets
through (``NaN``, ``1e400``, ``"\\udfff"``, 5,000 levels of nesting): the echo is made
encodable first, so the answer about bad input can always be written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from vpsweb_tasks.errors import (
    DependencyNotFoundError,
    DuplicateScheduleError,
    HandlerUnavailableError,
    IdempotencyKeyError,
    InvalidInputError,
    InvalidScheduleError,
    ManagerNotRunningError,
    NotConfiguredError,
    QueueFullError,
    RateLimitKeyError,
    ScheduleNotFoundError,
    StorageUnavailableError,
    TaskNotFoundError,
    TaskStateError,
    UnknownQueueError,
    UnknownTaskTypeError,
)

from .schemas import ErrorResponse

__all__ = [
    "GUARDED_RESPONSES",
    "LIBRARY_ERRORS",
    "OPEN_RESPONSES",
    "STREAM_RESPONSES",
    "error_response",
    "unparsable_body_response",
    "validation_error_response",
]

#: The exceptions :func:`error_response` answers.
LIBRARY_ERRORS: tuple[type[Exception], ...] = (
    TaskNotFoundError,
    TaskStateError,
    QueueFullError,
    UnknownTaskTypeError,
    ManagerNotRunningError,
    NotConfiguredError,
    ValidationError,
    InvalidInputError,
    HandlerUnavailableError,
    StorageUnavailableError,
    IdempotencyKeyError,
    ScheduleNotFoundError,
    InvalidScheduleError,
    UnknownQueueError,
    DependencyNotFoundError,
    RateLimitKeyError,
)

#: The documented error answers of the open routes (the health checks).
OPEN_RESPONSES: dict[int | str, dict[str, Any]] = {
    # Answered by FastAPI's body limit before any route runs, as plain text.
    413: {
        "description": "The request body is larger than http.max_request_bytes",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
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


def _as_json(responses: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    # FastAPI documents a response's model in the media type of the route's response
    # class: for an event stream, text/event-stream. Its errors are JSON all the same.
    ref = {"$ref": "#/components/schemas/ErrorResponse"}  # the other routes' ErrorResponse
    return {
        code: {
            "description": answer["description"],
            "content": {"application/json": {"schema": ref}},
        }
        if "model" in answer
        else answer
        for code, answer in responses.items()
    }


#: :data:`GUARDED_RESPONSES` of the event-stream routes (their errors are JSON).
STREAM_RESPONSES = _as_json(GUARDED_RESPONSES)


def _detail(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": _echo(message)}, status_code=status, headers=headers)


def _invalid(kind: str, loc: list[str], exc: Exception, given: Any, **ctx: Any) -> JSONResponse:
    """A 422 in FastAPI's validation shape: one error at ``loc``."""
    error = {"type": kind, "loc": loc, "msg": str(exc), "input": given, "ctx": ctx}
    return validation_error_response([error])


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
        case UnknownQueueError():
            return _invalid("unknown_queue", ["body", "queue"], exc, exc.queue, queues=exc.known)
        case RateLimitKeyError():
            return _invalid("invalid_rate_limit", ["body", exc.field], exc, exc.key)
        case DependencyNotFoundError():
            where = ["body", "depends_on"]
            return _invalid("unknown_dependency", where, exc, exc.missing)
        case ManagerNotRunningError():
            return _detail(503, str(exc))
        case NotConfiguredError():
            return JSONResponse({"detail": str(exc), "problems": exc.problems}, status_code=503)
        case ValidationError():
            # Models validated inside a call (e.g. one request per mode of a compare): the
            # body is what was invalid.
            errors = exc.errors(include_url=False)
            return validation_error_response(
                [{**error, "loc": ("body", *error["loc"])} for error in errors]
            )
        case InvalidInputError():
            return _invalid("invalid_input", ["body", exc.field], exc, None)
        case HandlerUnavailableError():
            return _detail(409, str(exc))
        case StorageUnavailableError():
            return JSONResponse(
                {"detail": str(exc), "cause": exc.cause.value},
                status_code=503,
                headers={"Retry-After": str(storage_retry_after)},
            )
        case ScheduleNotFoundError():
            return _detail(404, str(exc))
        case InvalidScheduleError():
            kind = "duplicate_schedule" if isinstance(exc, DuplicateScheduleError) else "invalid"
            return _invalid(kind, ["body", exc.field], exc, None)
    raise TypeError(f"not a library error: {exc!r}")  # pragma: no cover


# --- invalid requests ----------------------------------------------------------------------

#: How deep a 422 echoes the input it rejects; deeper values are cut to ``"..."``.
ECHO_DEPTH = 8
_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def _echo(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON can hold it and UTF-8 can encode it: non-finite numbers as
    strings, lone surrogates written out (``\\udfff``), bytes decoded, nesting cut at
    :data:`ECHO_DEPTH`, other objects as their ``str``."""
    match value:
        case None | bool() | int():
            return value
        case float():
            if math.isfinite(value):
                return value
            return _NON_FINITE.get(value, "NaN")
        case str():
            return value if value.isascii() else _text(value)
        case bytes() | bytearray():
            return bytes(value).decode("utf-8", "backslashreplace")
        case Mapping() | list() | tuple() | set() | frozenset() if depth >= ECHO_DEPTH:
            return "..."
        case Mapping():
            return {_echo(str(key), depth): _echo(item, depth + 1) for key, item in value.items()}
        case list() | tuple() | set() | frozenset():
            return [_echo(item, depth + 1) for item in value]
    return _text(str(value))


def _text(value: str) -> str:
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def validation_error_response(errors: Sequence[Mapping[str, Any]]) -> JSONResponse:
    """The 422 of invalid input: FastAPI's shape (``detail``: a list of ``type``, ``loc``,
    ``msg``, ``input``, ``ctx``), whatever the input held."""
    detail = []
    for error in errors:
        shown: dict[str, Any] = {
            "type": _echo(error.get("type", "invalid")),
            "loc": [_echo(part) for part in error.get("loc", ())],
            "msg": _echo(error.get("msg", "")),
        }
        if "input" in error:
            shown["input"] = _echo(error["input"])
        if error.get("ctx"):
            shown["ctx"] = _echo(error["ctx"])
        detail.append(shown)
    return JSONResponse({"detail": detail}, status_code=422)


def unparsable_body_response(exc: HTTPException) -> JSONResponse | None:
    """The 422 of a body FastAPI could not parse, or None if ``exc`` is not that. FastAPI
    answers 400 when parsing fails other than as a JSON syntax error (which it answers
    422): a body that is not UTF-8, or nested too deep for the parser. It is invalid input
    all the same, and the README promises 422 for it."""
    cause = exc.__cause__
    if exc.status_code != 400 or cause is None:
        return None
    match cause:
        case UnicodeDecodeError():
            message = f"The body is not UTF-8 JSON: {cause.reason} at byte {cause.start}"
        case RecursionError():
            message = "The body nests too deep to parse as JSON"
        case _:
            message = f"The body cannot be parsed as JSON: {cause}"
    error = {"type": "json_invalid", "loc": ("body",), "msg": message, "input": None}
    return validation_error_response([error])
