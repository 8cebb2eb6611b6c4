"""Shared fixtures: an anyio backend, settings on a temp SQLite file, stores, managers."""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vpsweb_tasks import TaskManager
from vpsweb_tasks.config import Settings, load_config
from vpsweb_tasks.storage.base import NewTask, TaskStore
from vpsweb_tasks.storage.sqlite import SQLiteTaskStore

BACKENDS = ["sqlite", "postgres"]

#: The PostgreSQL server of the postgres backend tests (started by .ci/run). When it is
#: unreachable those tests fail: CI must never skip them silently.
POSTGRES_DSN = os.environ.get(
    "VPSWEB_TASKS_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh, empty schema on the test server, dropped with everything in it after."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_DSN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(POSTGRES_DSN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP SCHEMA "{name}" CASCADE')


@pytest.fixture
def anyio_backend() -> str:
    # backoff's async decorator and psycopg need asyncio; trio is not a goal.
    return "asyncio"


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_settings(tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    """Settings on a fresh SQLite file under tmp_path, with quick test-friendly timings."""
    background = {
        "queue_check_interval": 0.05,
        "retry_delay": 0.01,
        "progress_flush_interval": 0.05,
        "shutdown_grace_period": 2.0,
        # The machine's real load must not pause tests; overload has its own tests.
        "pause_on_overload": False,
        **sections.pop("background_tasks", {}),
    }
    resources = {"cpu_smoothing_samples": 1, **sections.pop("system_resources", {})}
    storage = {"sqlite_path": str(tmp_path / "tasks.db"), **sections.pop("storage", {})}
    logging_ = {"file": str(tmp_path / "logs" / "repository.log"), **sections.pop("logging", {})}
    return load_config(
        background_tasks=background,
        storage=storage,
        logging=logging_,
        system_resources=resources,
        **sections,
    )


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., Settings]:
    return lambda **sections: make_settings(tmp_path, **sections)


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[TaskManager]:
    async with TaskManager(make_settings(tmp_path)) as m:
        yield m


_ids = itertools.count()


def new_task(now: float, **fields: Any) -> NewTask:
    """A NewTask with sensible defaults; ``fields`` override."""
    values: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "name": f"task {next(_ids)}",
        "task_type": "work",
        "priority": 1,
        "max_retries": 3,
        "run_at": now,
        "created_at": now,
    }
    values.update(fields)
    return NewTask(**values)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_factory(backend: str, tmp_path: Path) -> Iterator[Callable[..., TaskStore]]:
    """Makes unopened stores on one database of the selected backend (for postgres: one
    schema of the test server, made for this test and dropped after it)."""
    if backend == "sqlite":
        yield lambda **options: SQLiteTaskStore(tmp_path / "conformance.db", **options)
    elif backend == "postgres":
        from vpsweb_tasks.storage.postgres import PostgresTaskStore

        with postgres_schema() as schema:
            yield lambda **options: PostgresTaskStore(POSTGRES_DSN, schema=schema, **options)
    else:
        raise AssertionError(backend)


@pytest.fixture
def storage(backend: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The ``storage`` config section of a fresh database of the selected backend, for
    processes that read a config file (for postgres, a schema chosen in the DSN)."""
    if backend == "sqlite":
        yield {"backend": "sqlite", "sqlite_path": str(tmp_path / "shared.db")}
    else:
        import psycopg

        with postgres_schema() as schema:
            dsn = psycopg.conninfo.make_conninfo(POSTGRES_DSN, options=f"-csearch_path={schema}")
            yield {"backend": "postgres", "postgres_dsn": dsn}


@pytest.fixture
async def store(store_factory: Callable[..., TaskStore]) -> AsyncIterator[TaskStore]:
    async with store_factory() as s:
        yield s
