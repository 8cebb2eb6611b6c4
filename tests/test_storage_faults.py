"""Storage faults with real faults: a full volume, an immutable database, a damaged file.

The end-to-end tests run `vpsweb-tasks serve` in a subprocess on real HTTP. A full volume
is a small tmpfs (mounting needs root) or, where mounting is not allowed, the server's
own RLIMIT_FSIZE (lowered and raised again from here with prlimit); read-only is
``chattr +i`` on the database and its WAL (never on ``-shm``, which SQLite maps: a write
to an immutable mapped page is SIGBUS), which needs a filesystem that enforces it on
files already open (ext4 does, tmpfs does not).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg
import pytest

from tests.conftest import POSTGRES_DSN, new_task, postgres_schema
from tests.test_serve import free_port
from vpsweb_tasks.errors import StorageCorruptError, StorageFault, StorageUnavailableError
from vpsweb_tasks.storage.postgres import PostgresTaskStore, postgres_fault, safe_dsn
from vpsweb_tasks.storage.sqlite import SQLiteTaskStore, sqlite_fault
from vpsweb_tasks_http.errors import error_response

TASKS = "/api/v1/background-tasks"
SUBMIT = {"task_name": "resize", "task_type": "data_processing", "metadata": {}}
TRANSLATION = {
    "original_text": "Hello world",
    "source_language": "en",
    "target_language": "zh-Hans",
    "workflow_mode": "hybrid",
}


# --- the mapping of driver errors --------------------------------------------------------


def _sqlite_error(code: int, message: str = "boom") -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = code
    error.sqlite_errorname = f"code {code}"
    return error


@pytest.mark.parametrize(
    ("code", "cause"),
    [
        (13, StorageFault.DISK_FULL),  # SQLITE_FULL
        (8, StorageFault.READ_ONLY),  # SQLITE_READONLY
        (8 | (3 << 8), StorageFault.READ_ONLY),  # SQLITE_READONLY_ROLLBACK
        (5, StorageFault.LOCKED),  # SQLITE_BUSY
        (6, StorageFault.LOCKED),  # SQLITE_LOCKED
        (11, StorageFault.CORRUPT),  # SQLITE_CORRUPT
        (26, StorageFault.CORRUPT),  # SQLITE_NOTADB
        (10 | (3 << 8), StorageFault.UNAVAILABLE),  # SQLITE_IOERR_WRITE, writable file
    ],
)
def test_sqlite_errors_map_to_their_fault(tmp_path: Path, code: int, cause: StorageFault) -> None:
    path = tmp_path / "tasks.db"
    sqlite3.connect(path).close()
    fault = sqlite_fault(_sqlite_error(code), str(path))
    assert fault is not None
    assert fault.cause is cause
    assert str(path) in str(fault)


def test_sqlite_errors_that_are_no_fault_stay_themselves(tmp_path: Path) -> None:
    assert sqlite_fault(_sqlite_error(19, "UNIQUE constraint failed"), str(tmp_path)) is None
    assert sqlite_fault(sqlite3.ProgrammingError("closed"), str(tmp_path)) is None


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (psycopg.errors.DiskFull("could not extend file"), StorageFault.DISK_FULL),
        (
            psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only txn"),
            StorageFault.READ_ONLY,
        ),
        (psycopg.errors.LockNotAvailable("could not obtain lock"), StorageFault.LOCKED),
        (psycopg.errors.AdminShutdown("terminating connection"), StorageFault.UNAVAILABLE),
        (psycopg.errors.TooManyConnections("too many clients"), StorageFault.UNAVAILABLE),
        (psycopg.OperationalError("server closed the connection"), StorageFault.UNAVAILABLE),
        (psycopg.errors.DataCorrupted("invalid page"), StorageFault.CORRUPT),
    ],
)
def test_postgres_errors_map_to_their_fault(error: psycopg.Error, cause: StorageFault) -> None:
    fault = postgres_fault(error)
    assert fault is not None
    assert fault.cause is cause


def test_postgres_errors_that_are_no_fault_stay_themselves() -> None:
    assert postgres_fault(psycopg.errors.UniqueViolation("duplicate key")) is None
    assert postgres_fault(psycopg.errors.UndefinedTable("no such table")) is None
    assert postgres_fault(ValueError("not ours")) is None


def test_a_fault_is_a_503_naming_its_cause_with_retry_after() -> None:
    fault = StorageUnavailableError(StorageFault.DISK_FULL, "database or disk is full")
    response = error_response(fault, retry_after=5, storage_retry_after=7)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "7"
    body = json.loads(bytes(response.body))
    assert body["cause"] == "disk_full"
    assert "disk_full" in body["detail"]
    assert "database or disk is full" in body["detail"]


def test_a_dsn_is_named_without_its_password() -> None:
    shown = safe_dsn("postgresql://app:s3cret@db.example:5433/tasks?sslmode=require")
    assert "s3cret" not in shown
    assert "db.example" in shown
    assert "tasks" in shown


# --- PostgreSQL: a read-only session, a server that is not there -------------------------


@pytest.mark.anyio
async def test_postgres_read_only_session_refuses_writes_keeps_reads() -> None:
    """default_transaction_read_only on the store's own sessions (the state of a hot
    standby, or of a database an operator set read-only): writes raise read_only,
    reads go on, and the write check says so."""
    with postgres_schema() as schema:
        async with PostgresTaskStore(POSTGRES_DSN, schema=schema) as writable:
            await writable.add_task(new_task(1.0, id="kept"))
        read_only = psycopg.conninfo.make_conninfo(
            POSTGRES_DSN, options=f"-csearch_path={schema} -cdefault_transaction_read_only=on"
        )
        async with PostgresTaskStore(read_only) as store:
            with pytest.raises(StorageUnavailableError) as raised:
                await store.add_task(new_task(2.0))
            assert raised.value.cause is StorageFault.READ_ONLY
            assert "read-only" in str(raised.value)
            assert store.write_status.writable is False
            assert [task.id for task in await store.list_tasks()] == ["kept"]
            status = await store.check_writes(now=3.0)
            assert status.writable is False
            assert status.checked_at is not None
            assert status.error is not None
            assert status.error.cause is StorageFault.READ_ONLY


@pytest.mark.anyio
async def test_postgres_server_not_there_is_a_clear_error_naming_the_dsn() -> None:
    port = free_port()  # nothing listens there
    dsn = f"postgresql://app:s3cret@127.0.0.1:{port}/tasks"
    with pytest.raises(StorageUnavailableError) as raised:
        async with PostgresTaskStore(dsn, connect_timeout=1):
            pass
    message = str(raised.value)
    assert raised.value.cause is StorageFault.UNAVAILABLE
    assert f"port={port}" in message
    assert "s3cret" not in message
    assert "connect" in message


# --- SQLite startup: a damaged file, a file that is not a database ------------------------


def _corrupt_database(path: Path) -> None:
    """A real database of several thousand tasks, with garbage written over a page in the
    middle of the file (an interior page of the tasks table or one of its indexes)."""

    async def fill() -> None:
        async with SQLiteTaskStore(path, startup_check="off") as store:
            await store.add_tasks([new_task(1.0, name=f"poem {i}" * 5) for i in range(4000)])

    anyio.run(fill, backend="asyncio")
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.close()
    with path.open("r+b") as file:
        file.seek(page_size * (pages // 2))
        file.write(bytes(range(256)) * (page_size // 256))
    # Damaged: the check reports problems, or fails itself (SQLITE_CORRUPT).
    with (
        contextlib.closing(sqlite3.connect(path)) as check,
        contextlib.suppress(sqlite3.DatabaseError),
    ):
        assert check.execute("PRAGMA quick_check").fetchall() != [("ok",)]


@pytest.mark.anyio
@pytest.mark.parametrize("check", ["quick", "full"])
async def test_a_damaged_database_does_not_open(tmp_path: Path, check: str) -> None:
    path = tmp_path / "tasks.db"
    await anyio.to_thread.run_sync(_corrupt_database, path)
    store = SQLiteTaskStore(path, startup_check=check)  # type: ignore[arg-type]
    with pytest.raises(StorageCorruptError) as raised:
        await store.open()
    assert raised.value.path == str(path)
    assert str(path) in str(raised.value)
    assert raised.value.problems


@pytest.mark.anyio
async def test_a_file_that_is_not_a_database_does_not_open(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a database, " * 1000)
    with pytest.raises(StorageCorruptError) as raised:
        await SQLiteTaskStore(path).open()
    assert str(path) in str(raised.value)
    assert "not a database" in str(raised.value)
    assert path.read_text() == "not a database, " * 1000  # untouched


def _config(tmp_path: Path, **storage: Any) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "storage": storage,
                "logging": {"file": str(tmp_path / "logs" / "repository.log")},
                "http": {"storage_retry_after": 3},
                "task_monitoring": {"storage_check_interval": 0.2},
                "providers": {
                    "local": {"base_url": "http://127.0.0.1:9/v1", "models": {"default": "m"}}
                },
            }
        )
    )
    return config


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("VPSWEB_TASKS_")}


@pytest.mark.parametrize("command", ["serve", "worker"])
@pytest.mark.parametrize("damage", ["corrupt", "not_a_database"])
def test_the_cli_stops_with_one_line_naming_the_file(
    tmp_path: Path, command: str, damage: str
) -> None:
    path = tmp_path / "tasks.db"
    if damage == "corrupt":
        _corrupt_database(path)
    else:
        path.write_bytes(b"\x7fELF" + bytes(4096))
    args = [sys.executable, "-m", "vpsweb_tasks.cli", command, "--config"]
    args += [str(_config(tmp_path, sqlite_path=str(path)))]
    if command == "serve":
        args += ["--port", str(free_port())]
    done = subprocess.run(
        args, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = [each for each in done.stderr.splitlines() if f"vpsweb-tasks {command}:" in each]
    assert str(path) in line
    assert "not usable" in line


# --- a real server, real faults -------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen[str]
    url: str
    lines: list[str] = field(default_factory=list)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


@contextlib.contextmanager
def run_server(tmp_path: Path, database: Path, *, ignore_fsize: bool = False) -> Iterator[Server]:
    """`vpsweb-tasks serve --no-workers` (tasks stay waiting: what was accepted can be
    counted) on ``database``."""
    port = free_port()
    args = [sys.executable, "-m", "vpsweb_tasks.cli", "serve", "--no-workers"]
    args += ["--port", str(port), "--config", str(_config(tmp_path, sqlite_path=str(database)))]

    def ignore_sigxfsz() -> None:  # past RLIMIT_FSIZE a write fails (EFBIG) instead
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    process = subprocess.Popen(
        args,
        cwd=tmp_path,
        env=_env(),
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ignore_sigxfsz if ignore_fsize else None,
    )
    server = Server(process, f"http://127.0.0.1:{port}")
    assert process.stderr is not None
    for line in process.stderr:
        server.lines.append(line)
        if "Application startup complete" in line:
            break
    else:
        pytest.fail("the server exited before it started:\n" + "".join(server.lines))
    stderr = process.stderr
    drain = threading.Thread(target=lambda: server.lines.extend(stderr), daemon=True)
    drain.start()
    try:
        yield server
    finally:
        server.stop()
        drain.join(timeout=10)
        stderr.close()


def poll(check: Callable[[], Any], *, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.1)


def _task_ids(database: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(database)) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM background_tasks")}


def _submit_until_refused(client: httpx.Client, accepted: list[str]) -> httpx.Response:
    """Submit until a submit is refused; the ids of those accepted go to ``accepted``.
    (SQLite can go on writing into WAL space it has until the WAL must grow.)"""
    for _ in range(3000):
        answer = client.post(f"{TASKS}/submit", json=SUBMIT)
        if answer.status_code != 202:
            return answer
        accepted.append(answer.json()["task_id"])
    pytest.fail("3000 submits were all accepted: the fault did not take")


def _check_fault_over_http(
    client: httpx.Client,
    accepted: list[str],
    cause: str,
    *,
    every_write_fails: bool = True,
    disk_full_shows: bool = False,
) -> None:
    refused = _submit_until_refused(client, accepted)
    assert refused.status_code == 503, refused.text
    assert refused.json()["cause"] == cause
    assert cause in refused.json()["detail"]
    assert refused.headers["Retry-After"] == "3"
    assert accepted, "the fault took before any submit"

    # Every write route answers the same; none is half-done. (Under a file size limit a
    # write that fits in the WAL's free space still goes through: then it succeeded.)
    routes = [
        ("POST", f"{TASKS}/cancel/{accepted[0]}", None),
        ("POST", f"{TASKS}/queue/pause", None),
        ("POST", f"{TASKS}/queue/clear", None),
        ("POST", f"{TASKS}/translation", TRANSLATION),
    ]
    for method, path, body in routes if every_write_fails else routes[:2]:
        answer = client.request(method, path, json=body)
        if every_write_fails or answer.status_code >= 300:
            assert (answer.status_code, answer.json()["cause"]) == (503, cause), answer.text
    client.post(f"{TASKS}/queue/resume")

    # Reads go on.
    assert client.get(f"{TASKS}/status/{accepted[-1]}").json()["status"] == "pending"
    assert client.get(f"{TASKS}/queue/status").status_code == 200
    assert len(client.get(f"{TASKS}/queue/tasks", params={"limit": 1000}).json()["tasks"]) >= 1

    for path in (f"{TASKS}/health", "/api/v1/monitoring/health"):
        health = client.get(path).json()
        assert health["status"] == "unhealthy"
        assert health["storage_ok"] is True
        assert health["storage_writable"] is False
        assert health["storage_error"]["cause"] == cause
        assert health["storage_error"]["message"]
        assert any(alert["name"] == "storage_writes" for alert in health["alerts"])
    if disk_full_shows:  # read again at most every storage_check_interval (0.2 s here)
        poll(lambda: client.get(f"{TASKS}/health").json()["disk_usage"] > 99.0, timeout=5)


def _check_recovery(client: httpx.Client, accepted: list[str], database: Path) -> None:
    seen: list[dict[str, Any]] = []

    def healthy() -> dict[str, Any] | None:
        seen.append(client.get(f"{TASKS}/health").json())
        health = seen[-1]
        # Healthy but for the machine's own CPU and memory (other tests, other helpers).
        others = {alert["name"] for alert in health["alerts"]} - {"cpu", "memory"}
        return health if health["storage_writable"] and not others else None

    try:
        health = poll(healthy)
    except pytest.fail.Exception:
        raise AssertionError(f"never healthy again; last health: {seen[-1]}") from None
    if not health["alerts"]:
        assert health["status"] == "healthy"
    assert health["storage_error"] is not None  # the last fault, still shown (with its time)
    answer = client.post(f"{TASKS}/submit", json=SUBMIT)
    assert answer.status_code == 202, answer.text
    accepted.append(answer.json()["task_id"])
    for task_id in accepted:
        assert client.get(f"{TASKS}/status/{task_id}").status_code == 200
    assert _task_ids(database) == set(accepted)  # nothing lost, nothing half-accepted


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "volume"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): the fsize variant runs")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_volume_is_a_503_and_recovers_by_itself(tmp_path: Path, small_volume: Path) -> None:
    database = small_volume / "tasks.db"
    filler = small_volume / "filler"
    accepted: list[str] = []
    with (
        run_server(tmp_path, database) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        assert client.post(f"{TASKS}/submit", json=SUBMIT).status_code == 202
        accepted += [task["task_id"] for task in client.get(f"{TASKS}/active").json()["tasks"]]
        with filler.open("wb") as file, contextlib.suppress(OSError):
            while True:
                file.write(bytes(65536))
                file.flush()
        _check_fault_over_http(client, accepted, "disk_full", disk_full_shows=True)
        filler.unlink()
        _check_recovery(client, accepted, database)
    assert _task_ids(database) == set(accepted)


def test_a_file_size_limit_is_a_503_and_recovers_by_itself(tmp_path: Path) -> None:
    """The fallback where no tmpfs can be mounted: the server's RLIMIT_FSIZE is lowered
    to the size of its files (a write that would grow them fails with EFBIG), then
    raised again."""
    database = tmp_path / "db" / "tasks.db"
    accepted: list[str] = []
    with (
        run_server(tmp_path, database, ignore_fsize=True) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        assert client.post(f"{TASKS}/submit", json=SUBMIT).status_code == 202
        accepted += [task["task_id"] for task in client.get(f"{TASKS}/active").json()["tasks"]]
        pid = server.process.pid
        sizes = [f.stat().st_size for f in database.parent.iterdir() if f.name != "tasks.db-shm"]
        _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (max(sizes), hard))
        _check_fault_over_http(client, accepted, "disk_full", every_write_fails=False)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))
        _check_recovery(client, accepted, database)
    assert _task_ids(database) == set(accepted)


def _enforces_immutable(folder: Path) -> str | None:
    """Why ``chattr +i`` cannot stand for a read-only database here, or None."""
    probe = folder / "probe"
    with probe.open("wb") as file:
        made = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, text=True)
        if made.returncode != 0:
            return f"chattr +i is not available here: {made.stderr.strip()}"
        try:
            file.write(b"x")
            file.flush()
        except OSError:
            return None
        finally:
            subprocess.run(["chattr", "-i", str(probe)], check=False)
            probe.unlink()
    return "this filesystem lets open files be written after chattr +i"


def test_an_immutable_database_is_a_503_and_recovers_by_itself(tmp_path: Path) -> None:
    folder = tmp_path / "db"
    folder.mkdir()
    why = _enforces_immutable(folder)
    if why is not None:
        pytest.skip(why)
    database = folder / "tasks.db"
    files = [str(database), f"{database}-wal"]
    accepted: list[str] = []
    with (
        run_server(tmp_path, database) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        assert client.post(f"{TASKS}/submit", json=SUBMIT).status_code == 202
        accepted += [task["task_id"] for task in client.get(f"{TASKS}/active").json()["tasks"]]
        subprocess.run(["chattr", "+i", *files], check=True)
        try:
            _check_fault_over_http(client, accepted, "read_only")
        finally:
            subprocess.run(["chattr", "-i", *files], check=True)
        _check_recovery(client, accepted, database)
    assert _task_ids(database) == set(accepted)
