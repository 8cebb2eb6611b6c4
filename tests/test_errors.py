"""The exception tree: one root, lookup errors are LookupErrors, the hierarchy documented,
and errors.py free of the classifier's dependencies."""

from __future__ import annotations

import ast
import inspect

import pybreaker

from vpsweb_tasks import errors
from vpsweb_tasks.errors import (
    CircuitOpenError,
    TaskNotFoundError,
    UnknownTaskTypeError,
    VpswebTasksError,
)
from vpsweb_tasks.translation.errors import TranslationJobNotFoundError

EXCEPTIONS = [
    value
    for name in errors.__all__
    if isinstance(value := getattr(errors, name), type) and issubclass(value, BaseException)
]


def test_every_exception_has_one_root_and_appears_in_the_documented_hierarchy() -> None:
    assert len(EXCEPTIONS) > 10
    doc = errors.__doc__ or ""
    for cls in EXCEPTIONS:
        assert issubclass(cls, VpswebTasksError), cls
        assert cls.__name__ in doc, cls


def test_lookup_errors_and_the_breaker_error() -> None:
    for cls in (TaskNotFoundError, TranslationJobNotFoundError, UnknownTaskTypeError):
        assert issubclass(cls, LookupError)
    assert issubclass(CircuitOpenError, pybreaker.CircuitBreakerError)


def test_errors_imports_neither_the_classifier_nor_its_dependencies() -> None:
    tree = ast.parse(inspect.getsource(errors))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
    assert imported.isdisjoint({"httpx", "sqlite3", ".classify", "vpsweb_tasks.classify"})
