"""What storage and JSON can hold, checked once for the library and the HTTP API alike.

Both backends store text columns and JSON as text, and every answer is UTF-8 JSON, so a
value is accepted only if it survives that round trip:

* text (names, ids, reasons, filters, a poem) holds no NUL character (PostgreSQL's text
  cannot) and no lone surrogate (``"\\udfff"``: not Unicode text, so no UTF-8 encoder,
  SQLite's or a JSON response's, can write it);
* JSON (metadata, payloads, results) holds no lone surrogate in a key or a string, no
  non-finite number (``NaN``, ``Infinity``, ``1e400``: JSON has none), nests at most
  :data:`MAX_JSON_DEPTH` levels and encodes to at most :data:`MAX_JSON_BYTES`. A NUL
  inside a JSON string is fine: it is stored as the escape ``\\u0000``.

:data:`Text` (or :data:`storable` after a string's own constraints) and
:data:`JsonObject` are the pydantic types that check this (request
models and :class:`~vpsweb_tasks.TaskDefinition` use them: a ``ValidationError`` naming the
field); :func:`check_text` and :func:`check_json_object` check a plain argument and raise
:class:`~vpsweb_tasks.errors.InvalidInputError` naming it. :func:`text_problem` and
:func:`json_problem` say what is wrong, for code that decides rather than raises (storage
answers "not found" for an id that no row can have).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

from .errors import InvalidInputError

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "JsonObject",
    "Text",
    "check_json_object",
    "check_text",
    "encode_json",
    "json_problem",
    "json_values_problem",
    "readable",
    "storable",
    "storable_text",
    "text_problem",
]

#: Largest JSON encoding accepted for a task's metadata or payload.
MAX_JSON_BYTES = 64 * 1024
#: Deepest nesting of objects and arrays accepted in JSON (the top object is level 1).
MAX_JSON_DEPTH = 64


def text_problem(value: str) -> str | None:
    """Why storage cannot hold ``value`` as text, or None if it can."""
    nul = value.find("\x00")
    if nul >= 0:
        return f"must not contain a NUL character (\\x00, at index {nul})"
    if value.isascii():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = value[exc.start]
        return f"must be valid Unicode text: lone surrogate \\u{ord(char):04x} at index {exc.start}"
    return None


def _surrogate_problem(value: str) -> str | None:
    if value.isascii():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = value[exc.start]
        return f"lone surrogate \\u{ord(char):04x} at index {exc.start} is not valid Unicode"
    return None


def _where(path: tuple[str | int, ...]) -> str:
    if not path:
        return "(top)"
    parts = [storable_text(str(part)) for part in path]
    if len(parts) > 6:
        parts = [*parts[:3], "...", *parts[-2:]]
    return ".".join(parts)


def json_values_problem(value: Any) -> str | None:
    """What :func:`encode_json` rejects before encoding: a lone surrogate in a key or a
    string, a non-finite number, nesting deeper than :data:`MAX_JSON_DEPTH`; None if
    there is none. Values JSON has no type for are left alone (the encoder decides)."""
    # Iterative, so that depth is checked before anything recurses (json.dumps would).
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            problem = _surrogate_problem(item)
            if problem is not None:
                return f"{_where(path)}: {problem}"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"{_where(path)}: {item!r} is not a JSON number (it must be finite)"
        elif isinstance(item, Mapping | list | tuple):
            if len(path) >= MAX_JSON_DEPTH:
                return f"{_where(path)}: nests deeper than {MAX_JSON_DEPTH} levels"
            if isinstance(item, Mapping):
                for key, child in item.items():
                    if isinstance(key, str):
                        problem = _surrogate_problem(key)
                        if problem is not None:
                            return f"{_where((*path, key))}: key: {problem}"
                    stack.append((child, (*path, key)))
            else:
                stack.extend((child, (*path, i)) for i, child in enumerate(item))
    return None


def encode_json(value: Any, *, max_bytes: int | None = MAX_JSON_BYTES) -> str:
    """``value`` as compact JSON, if storage can hold it (see the module docstring; no
    size bound with ``max_bytes=None``); else ``ValueError`` saying why and where:
    ``"items.3.name: lone surrogate \\udfff at index 0 is not valid Unicode"``."""
    problem = json_values_problem(value)
    if problem is not None:
        raise ValueError(problem)
    try:
        encoded = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"must be JSON-serialisable: {exc}") from None
    if max_bytes is not None and len(encoded) > max_bytes:  # ensure_ascii: chars are bytes
        raise ValueError(f"must encode to at most {max_bytes} bytes of JSON")
    return encoded


def json_problem(value: Any, *, max_bytes: int | None = MAX_JSON_BYTES) -> str | None:
    """Why storage cannot hold ``value`` as JSON (:func:`encode_json`), or None."""
    try:
        encode_json(value, max_bytes=max_bytes)
    except ValueError as exc:
        return str(exc)
    return None


def storable_text(value: str) -> str:
    """``value`` with what storage cannot hold written out (NUL as ``\\x00``, a lone
    surrogate as ``\\udfff``): for text the system makes itself, an error message say,
    which must be stored whatever it holds."""
    if text_problem(value) is None:
        return value
    escaped = value.replace("\x00", "\\x00")
    return escaped.encode("utf-8", "backslashreplace").decode("utf-8")


def _written_out(value: str) -> str:
    if value.isascii() or _surrogate_problem(value) is None:
        return value
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def readable(value: Any) -> Any:
    """``value`` (JSON as parsed) with every lone surrogate in its strings and keys written
    out (``\\udfff``), changed in place. For JSON stored before these checks existed:
    text with a lone surrogate's escape parses back to a string no answer can encode."""
    if isinstance(value, str):
        return _written_out(value)
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key in list(item):
                child = item[key]
                if isinstance(key, str) and _written_out(key) != key:
                    del item[key]
                    key = _written_out(key)
                if isinstance(child, str):
                    child = _written_out(child)
                elif isinstance(child, dict | list):
                    stack.append(child)
                item[key] = child
        elif isinstance(item, list):
            for i, child in enumerate(item):
                if isinstance(child, str):
                    item[i] = _written_out(child)
                elif isinstance(child, dict | list):
                    stack.append(child)
    return value


def check_text(value: str, field: str) -> str:
    """``value``, if storage can hold it as text; else :class:`InvalidInputError` naming
    ``field``."""
    if not isinstance(value, str):
        raise InvalidInputError(field, f"must be a string, not {type(value).__name__}")
    problem = text_problem(value)
    if problem is not None:
        raise InvalidInputError(field, problem)
    return value


def check_json_object(value: Mapping[str, Any], field: str) -> dict[str, Any]:
    """``value`` as a dict, if storage can hold it as a JSON object; else
    :class:`InvalidInputError` naming ``field`` (and the place inside it)."""
    if not isinstance(value, Mapping):
        raise InvalidInputError(field, f"must be a JSON object, not {type(value).__name__}")
    if not value and type(value) is dict:  # most payloads: nothing to check
        return value
    problem = json_problem(value)
    if problem is not None:
        raise InvalidInputError(field, problem)
    return dict(value)


def _text(value: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise PydanticCustomError("invalid_text", "Text {problem}", {"problem": problem})
    return value


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    if not value and type(value) is dict:
        return value
    problem = json_problem(value)
    if problem is not None:
        raise PydanticCustomError("invalid_json", "Invalid JSON: {problem}", {"problem": problem})
    return value


#: The check of :data:`Text`, for a string with constraints of its own, placed after them
#: (so that they are checked as string constraints):
#: ``Annotated[str, Field(max_length=500), storable]``.
storable = AfterValidator(_text)
#: A string storage can hold (no NUL, no lone surrogate).
Text = Annotated[str, storable]
#: A JSON object storage can hold (see the module docstring).
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_object)]
