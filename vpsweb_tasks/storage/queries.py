"""Named queries and migrations, per dialect, read from ``.sql`` files.

A store's schema and SQL come from *components*: the core's (``vpsweb_tasks.storage``)
and one per installed extension. A component is a package holding::

    migrations/sqlite/0001_name.sql     migrations/postgres/0001_name.sql   (numbered)
    queries/sqlite.sql                  queries/postgres.sql

A queries file is a list of blocks, each starting with ``-- name: <query>`` and followed
by comment lines that document it and by its SQL (procrastinate's ``queries.sql``)::

    -- name: get_task
    -- One task by id.
    SELECT * FROM background_tasks WHERE id = :id;

SQLite's files use ``:param``, PostgreSQL's ``%(param)s``. A SQLite query may hold
several statements, run in order with the same parameters: its result is that of the
last statement that returns rows (or the last statement's row count). A PostgreSQL query
is one statement. An extension's queries are named ``<component>.<query>``.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources

__all__ = ["CORE", "Component", "Migration", "Queries", "split_statements"]

_NAME = re.compile(r"^--\s*name:\s*([A-Za-z_]\w*)\s*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Migration:
    component: str
    version: int
    name: str
    sql: str


@dataclass(frozen=True, slots=True)
class Component:
    """Tables, migrations and named queries that one part of the system adds to a store."""

    name: str
    """``core``, or the extension's name: its queries are named ``<name>.<query>``."""
    package: str
    """The package holding ``migrations/<dialect>/`` and ``queries/<dialect>.sql``."""
    tables: tuple[str, ...] = field(default=())
    """Its tables, parents before children (a PostgreSQL backup copies them in order)."""

    def migrations(self, dialect: str) -> list[Migration]:
        """Its migration scripts for ``dialect``, in order."""
        folder = resources.files(self.package) / "migrations" / dialect
        if not folder.is_dir():
            return []
        found = [
            Migration(
                self.name,
                int(entry.name.split("_", 1)[0]),
                entry.name,
                entry.read_text(encoding="utf-8"),
            )
            for entry in folder.iterdir()
            if entry.name.endswith(".sql")
        ]
        return sorted(found, key=lambda migration: migration.version)

    def queries(self, dialect: str) -> str:
        """The text of its queries file for ``dialect`` ('' if it has none)."""
        path = resources.files(self.package) / "queries" / f"{dialect}.sql"
        return path.read_text(encoding="utf-8") if path.is_file() else ""


#: The core tables, parents first (``task_metrics`` is a view of ``task_executions`` and
#: ``task_metrics_archived``, the rows written before it).
CORE = Component(
    "core",
    "vpsweb_tasks.storage",
    tables=(
        "background_tasks",
        "task_executions",
        "task_metrics_archived",
        "system_metrics",
        "task_progress",
        "workers",
        "queue_state",
        "circuit_breakers",
        "schedules",
        "schedule_ticks",
    ),
)


def _without_comments(sql: str) -> str:
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return "\n".join(lines).strip()


def split_statements(sql: str) -> list[str]:
    """The statements of a SQLite script; a trigger body's semicolons stay inside it."""
    statements: list[str] = []
    current = ""
    for chunk in _without_comments(sql).split(";"):
        current += chunk + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \n;"):
                statements.append(current.strip())
            current = ""
    if current.strip(" \n;"):
        raise ValueError(f"incomplete SQL statement: {current!r}")
    return statements


def parse(text: str) -> dict[str, str]:
    """``{name: sql}`` of a queries file."""
    found: dict[str, str] = {}
    marks = list(_NAME.finditer(text))
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        body = text[mark.end() : following.start() if following else len(text)]
        name = mark.group(1)
        if name in found:
            raise ValueError(f"query {name!r} is defined twice")
        found[name] = _without_comments(body)
    return found


class Queries:
    """The named queries of one dialect, from the components loaded into it.

    ``split`` (SQLite) keeps each query as its list of statements."""

    def __init__(self, dialect: str, *, split: bool) -> None:
        self.dialect = dialect
        self.split = split
        self._queries: dict[str, tuple[str, ...]] = {}

    def load(self, components: Iterable[Component]) -> None:
        for component in components:
            prefix = "" if component.name == CORE.name else f"{component.name}."
            for name, sql in parse(component.queries(self.dialect)).items():
                key = prefix + name
                if key in self._queries:
                    raise ValueError(f"query {key!r} is defined twice")
                self._queries[key] = tuple(split_statements(sql)) if self.split else (sql,)

    def __getitem__(self, name: str) -> tuple[str, ...]:
        try:
            return self._queries[name]
        except KeyError:
            raise KeyError(f"no {self.dialect} query named {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._queries

    def items(self) -> list[tuple[str, tuple[str, ...]]]:
        return list(self._queries.items())
