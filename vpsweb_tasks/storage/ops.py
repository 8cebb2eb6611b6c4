"""Storage operations, written once for every backend.

An operation is a generator that yields :class:`Step` objects (a named query and its
parameters), receives each step's result, and returns its own result. It does no I/O:
a backend *drives* it, running every step with the SQL its dialect file gives that name
(``queries/sqlite.sql``, ``queries/postgres.sql``)::

    @operation(Mode.READ)
    def get_task(task_id: str) -> Op[TaskRecord | None]:
        found = yield row("get_task", id=task_id)
        return None if found is None else task_from_row(found)

    record = await store.run(get_task("0193..."))

So every decision (what to write, what a row means, what to do with a lost lease) lives
in one place, and each backend supplies only connections, transactions and its SQL.
Extensions write their own operations on their own named queries the same way (see
:meth:`~vpsweb_tasks.storage.base.TaskStore.run`).

Parameters are passed by name. A list or tuple parameter is a list of scalars: PostgreSQL
receives it as an array, SQLite as JSON text (its queries read it with ``json_each``).
Rows are dicts keyed by column name.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Generic, Literal, ParamSpec, TypeVar

__all__ = [
    "Fetch",
    "Mode",
    "Op",
    "Operation",
    "Step",
    "count",
    "drive",
    "drive_async",
    "operation",
    "row",
    "rows",
    "script",
    "value",
]

T = TypeVar("T")
P = ParamSpec("P")


class Mode(Enum):
    """How a backend wraps an operation's steps in transactions."""

    READ = "read"
    """Reads. SQLite: one read transaction; PostgreSQL: each statement on its own."""
    SNAPSHOT = "snapshot"
    """Reads that must agree with each other: one snapshot on both backends."""
    WRITE = "write"
    """Writes in one transaction: all of them or none."""
    STATEMENTS = "statements"
    """Writes where each step is atomic on its own and the operation is correct without a
    transaction around them (PostgreSQL runs them in autocommit: one round trip a step);
    SQLite still runs them in one (group) transaction."""
    ALONE = "alone"
    """Outside any transaction (VACUUM, checkpoints, backups)."""


#: What a step's result is: ``rows`` (a list of dicts), ``row`` (a dict or None),
#: ``value`` (the first column of the first row, or None), ``count`` (rows changed),
#: ``script`` (a migration script run for its effects; None).
Fetch = Literal["rows", "row", "value", "count", "script"]


@dataclass(frozen=True, slots=True)
class Step:
    """One named query to run, with its parameters (or, for ``script``, SQL text)."""

    query: str
    params: Mapping[str, Any]
    fetch: Fetch


def rows(query: str, /, **params: Any) -> Step:
    """Every row of a named query, as dicts."""
    return Step(query, params, "rows")


def row(query: str, /, **params: Any) -> Step:
    """The first row of a named query as a dict, or None."""
    return Step(query, params, "row")


def value(query: str, /, **params: Any) -> Step:
    """The first column of the first row of a named query, or None."""
    return Step(query, params, "value")


def count(query: str, /, **params: Any) -> Step:
    """The number of rows a named query changed."""
    return Step(query, params, "count")


def script(sql: str) -> Step:
    """A migration script (several statements, no parameters)."""
    return Step(sql, {}, "script")


#: The generator an operation function returns.
Op = Generator[Step, Any, T]


@dataclass(frozen=True, slots=True)
class Operation(Generic[T]):
    """An operation ready to run: its function, arguments and mode. Backends may run it
    more than once (a group commit that failed is retried job by job), so each run
    starts a new generator."""

    fn: Callable[..., Op[T]]
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    mode: Mode

    def steps(self) -> Op[T]:
        return self.fn(*self.args, **self.kwargs)

    def in_mode(self, mode: Mode) -> Operation[T]:
        return replace(self, mode=mode)


def operation(mode: Mode) -> Callable[[Callable[P, Op[T]]], Callable[P, Operation[T]]]:
    """Makes a generator function into an operation factory of the given mode."""

    def decorate(fn: Callable[P, Op[T]]) -> Callable[P, Operation[T]]:
        @functools.wraps(fn)
        def make(*args: P.args, **kwargs: P.kwargs) -> Operation[T]:
            return Operation(fn, args, kwargs, mode)

        return make

    return decorate


def drive(steps: Op[T], execute: Callable[[Step], Any]) -> T:
    """Run an operation's steps with a synchronous ``execute``; its result."""
    result: Any = None
    while True:
        try:
            step = steps.send(result)
        except StopIteration as done:
            returned: T = done.value
            return returned
        result = execute(step)


async def drive_async(steps: Op[T], execute: Callable[[Step], Any]) -> T:
    """Run an operation's steps with an asynchronous ``execute``; its result."""
    result: Any = None
    while True:
        try:
            step = steps.send(result)
        except StopIteration as done:
            returned: T = done.value
            return returned
        result = await execute(step)
