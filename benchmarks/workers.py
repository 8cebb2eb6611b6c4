"""What the benchmarks with worker processes share (multiprocess.py, pool.py,
crossprocess.py): the config file, the API-only process's handler, ``vpsweb-tasks
worker`` processes, and a fresh PostgreSQL schema a run."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import yaml

from vpsweb_tasks import TaskContext

ROOT = Path(__file__).resolve().parent.parent


def write_config(folder: Path, storage: dict[str, Any], **background: Any) -> Path:
    """A config file in ``folder`` for an API-only process (``enabled: false``) and its
    workers: ``storage``, these ``background_tasks`` settings, warnings only."""
    config = folder.resolve() / f"config-{uuid.uuid4().hex[:6]}.yaml"  # workers run in ROOT
    settings = {
        "storage": storage,
        "background_tasks": {"enabled": False, **background},
        "logging": {"file": None, "level": "WARNING"},
    }
    config.write_text(yaml.safe_dump(settings))
    return config


async def never(context: TaskContext) -> None:
    raise AssertionError("the submitting process runs no tasks")


def spawn(
    config: Path, *options: str, tasks: str = "benchmarks.noop_tasks"
) -> subprocess.Popen[str]:
    """``vpsweb-tasks worker`` on ``config`` running the module ``tasks``'s handlers; its
    stdout (the READY line) is a pipe."""
    command = [sys.executable, "-m", "vpsweb_tasks.cli", "worker", "--config", str(config)]
    return subprocess.Popen(
        [*command, "--import", tasks, *options], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )


def stop(processes: Iterable[subprocess.Popen[str]]) -> None:
    """SIGTERM to each still running, then wait for all of them."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


@contextmanager
def fresh_schema(dsn: str, options: str = "") -> Iterator[str]:
    """A new schema, dropped after; the DSN whose search_path is it (``options``: more
    ``-c`` settings)."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield psycopg.conninfo.make_conninfo(dsn, options=f"-csearch_path={schema}{options}")
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
