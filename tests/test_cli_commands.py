"""The inspection commands (`tasks`, `dead-letters`, `submit`, `queue`, `watch`) as a
user runs them: real `python -m vpsweb_tasks.cli` processes, on a SQLite file and on
PostgreSQL directly, and against a real uvicorn server over HTTP; `watch` under a
pseudo-terminal, read until the process exits."""

from __future__ import annotations

import errno
import json
import os
import pty
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from vpsweb_tasks import TaskContext, TaskDefinition, TaskManager
from vpsweb_tasks.cli import main
from vpsweb_tasks.config import Settings
from vpsweb_tasks_http import create_app

from .conftest import make_settings
from .http_server import serve

pytestmark = pytest.mark.anyio

CLI = [sys.executable, "-m", "vpsweb_tasks.cli"]
API_KEY = "cli-test-key"


@pytest.fixture(autouse=True)
def no_cli_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands run in this process read no config, URL or key of the environment."""
    for name in ("VPSWEB_TASKS_CONFIG", "VPSWEB_TASKS_URL", "VPSWEB_TASKS_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def clean_env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VPSWEB_TASKS_")}
    return {**env, **more}


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def cli_many(
    *commands: tuple[str, ...], cwd: Path, env: dict[str, str] | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """Commands that do not depend on each other, run side by side (each process spends
    most of its time importing)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda args: cli(*args, cwd=cwd, env=env), commands))


async def acli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Done:
    """The command in a process, while this test's event loop serves HTTP."""
    done = await anyio.run_process([*CLI, *args], cwd=cwd, env=env or clean_env(), check=False)
    return Done(done.returncode, done.stdout.decode(), done.stderr.decode())


async def acli_many(
    *commands: tuple[str, ...], cwd: Path, env: dict[str, str] | None = None
) -> list[Done]:
    """:func:`acli` for commands that do not depend on each other, side by side."""
    done: dict[int, Done] = {}

    async def one(index: int, args: tuple[str, ...]) -> None:
        done[index] = await acli(*args, cwd=cwd, env=env)

    async with anyio.create_task_group() as tg:
        for index, args in enumerate(commands):
            tg.start_soon(one, index, args)
    return [done[index] for index in range(len(commands))]


def here(capsys: pytest.CaptureFixture[str], *args: str) -> Done:
    """The command run in this process (``main``): for the many ways to fail, which need
    no process each (the processes above show the same code path ends the process)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return Done(code, out, err)


async def ahere(capsys: pytest.CaptureFixture[str], *args: str) -> Done:
    """:func:`here` while this test's event loop serves HTTP."""
    code = await anyio.to_thread.run_sync(main, list(args))
    out, err = capsys.readouterr()
    return Done(code, out, err)


class Done:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def ok(done: subprocess.CompletedProcess[str] | Done) -> Any:
    """The JSON a command printed, once it succeeded."""
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def refused(done: subprocess.CompletedProcess[str] | Done, code: int, *words: str) -> str:
    """A failure: the status, nothing on stdout, one line on stderr naming ``words``."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    for word in words:
        assert word in line, line
    return line


# --- task types and a database with tasks in it -------------------------------------------------


async def work(context: TaskContext) -> dict[str, Any]:
    return {"doubled": 2 * context.payload.get("n", 0)}


async def boom(context: TaskContext) -> None:
    raise ValueError("the input is bad")


def register(manager: TaskManager) -> None:
    manager.register("work", work)
    manager.register("boom", boom)


async def fill(settings: Settings) -> dict[str, str]:
    """A completed task, two failed ones (validation errors are not retried) and one
    waiting an hour."""
    async with TaskManager(settings) as manager:
        register(manager)
        done = await manager.submit(TaskDefinition(name="done", task_type="work"), n=1)
        await done.wait(timeout=10)
        failed = []
        for name in ("first failure", "second failure"):
            context = await manager.submit(TaskDefinition(name=name, task_type="boom"))
            await context.wait(timeout=10)
            failed.append(context.task_id)
        later = await manager.submit(TaskDefinition(name="later", task_type="work", delay=3600))
    return {"done": done.task_id, "f1": failed[0], "f2": failed[1], "later": later.task_id}


def config_file(tmp_path: Path, storage: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"storage": storage, "logging": {"file": None}}))
    return path


# --- each command, on the database directly -----------------------------------------------------


def test_each_command_on_the_database_directly(
    tmp_path: Path, storage: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(tmp_path, storage=storage)
    ids = anyio.run(fill, settings, backend="asyncio")
    config = ["--config", str(config_file(tmp_path, storage))]

    def run(*commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
        return cli_many(*[(*command, *config) for command in commands], cwd=tmp_path)

    # Reads, side by side.
    listed, boom, shown, letters = run(
        ("tasks", "list", "--json"),
        ("tasks", "list", "--json", "--status", "failed,completed", "--type", "boom"),
        ("tasks", "show", ids["f1"], "--json"),
        ("dead-letters", "list", "--category", "validation", "--limit", "1", "--json"),
    )
    # Waiting and running tasks first, newest first; then finished, latest first.
    expected = [ids["later"], ids["f2"], ids["f1"], ids["done"]]
    assert [t["task_id"] for t in ok(listed)] == expected
    assert [t["task_id"] for t in ok(boom)] == [ids["f2"], ids["f1"]]
    shown_view = ok(shown)
    assert (shown_view["status"], shown_view["error"]["type"]) == ("failed", "ValueError")
    assert [e["outcome"] for e in shown_view["executions"]] == ["failed"]
    assert [t["task_id"] for t in ok(letters)] == [ids["f2"]]  # the latest failure
    table = here(capsys, "tasks", "show", ids["f1"], *config)
    assert table.returncode == 0
    assert "ValueError [validation]: the input is bad" in table.stdout
    refused(here(capsys, "tasks", "show", "no-such-task", *config), 3, "not found: no-such-task")

    # Writes to different tasks, side by side.
    retried, cancelled, submitted_ = run(
        ("tasks", "retry", ids["f1"], "--json"),
        ("tasks", "cancel", ids["later"], "--json"),
        ("submit", "work", "--payload", '{"n": 21}', "--priority", "high", "--json"),
    )
    assert ok(retried)["status"] == "pending"
    assert ok(cancelled)["status"] == "cancelled"
    submitted = ok(submitted_)
    assert (submitted["status"], submitted["priority"], submitted["replayed"]) == (
        "pending",
        "high",
        False,
    )

    requeued, paused = run(
        ("dead-letters", "requeue", "--category", "validation", "--json"),
        ("queue", "pause", "--reason", "deploying", "--json"),
    )
    assert ok(requeued) == {"requeued": 1}  # f2: f1 is waiting already
    again = here(capsys, "tasks", "retry", ids["f1"], *config)
    refused(again, 6, f"cannot requeue task {ids['f1']}: it is pending")
    refused(here(capsys, "tasks", "cancel", ids["later"], *config), 6, "it is cancelled")
    assert (ok(paused)["paused"], ok(paused)["pause_reason"]) == (True, "deploying")

    (resumed,) = run(("queue", "resume"))
    assert resumed.stdout == "queue running: 3 waiting, 0 running\n"  # f1, f2, submitted
    (cleared,) = run(("queue", "clear", "--json"))
    assert ok(cleared) == {"cancelled": 3}

    async def read() -> Any:
        async with TaskManager(settings) as manager:
            return await manager.get_task(submitted["task_id"])

    record = anyio.run(read, backend="asyncio")
    assert (record.task_type, record.payload, record.status) == ("work", {"n": 21}, "cancelled")


def test_submit_names_a_queue_dependencies_and_a_concurrency_key(
    tmp_path: Path, storage: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """The HTTP body's ``queue``, ``depends_on`` and ``concurrency_key`` as options, stored
    with the task; a bad value of each is refused naming the option."""
    queues = {"default": {}, "batch": {}}
    settings = make_settings(tmp_path, storage=storage, background_tasks={"queues": queues})
    ids = anyio.run(fill, settings, backend="asyncio")
    path = tmp_path / "queues.yaml"
    document = {"storage": storage, "background_tasks": {"queues": queues}}
    path.write_text(yaml.safe_dump({**document, "logging": {"file": None}}))
    config = ["--config", str(path)]

    first, second = ids["later"], ids["done"]
    submitted = cli(
        *("submit", "work", "--queue", "batch", "--concurrency-key", "user:42"),
        *("--depends-on", first, "--depends-on", second, "--json", *config),
        cwd=tmp_path,
    )
    shown = ok(cli("tasks", "show", ok(submitted)["task_id"], "--json", *config, cwd=tmp_path))
    assert (shown["queue"], shown["depends_on"], shown["concurrency_key"]) == (
        "batch",
        [first, second],
        "user:42",
    )
    assert shown["status"] == "pending"  # waits for `later`, an hour away

    cases: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
        (("--queue", "nowhere"), ("--queue: unknown queue 'nowhere'",)),
        (("--depends-on", "no-such-task"), ("--depends-on: no task no-such-task",)),
        (("--concurrency-key", ""), ("--concurrency-key",)),
        (("--depends-on", first, "--delay", "5"), ("not with run_at or delay",)),
    ]
    for args, words in cases:
        refused(here(capsys, "submit", "work", *args, *config), 2, *words)


def test_bad_input_is_one_line_and_a_documented_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = {"backend": "sqlite", "sqlite_path": str(tmp_path / "tasks.db")}
    config = ["--config", str(config_file(tmp_path, storage))]

    refused(cli("tasks", "list", *config, cwd=tmp_path), 4, "no database at", "tasks.db")
    assert not (tmp_path / "tasks.db").exists()  # a client creates no database

    anyio.run(fill, make_settings(tmp_path, storage=storage), backend="asyncio")
    cases: list[tuple[tuple[str, ...], int, tuple[str, ...]]] = [
        (("submit", "work", "--payload", "{nope"), 2, ("--payload: not valid JSON",)),
        (("submit", "work", "--payload", "[1, 2]"), 2, ("--payload: must be a JSON object",)),
        (("submit", "work", "--payload", '{"x": NaN}'), 2, ("NaN is not JSON",)),
        (("submit", "work", "--payload", "@missing.json"), 2, ("cannot read missing.json",)),
        (("submit", "work", "--payload", '{"x": "\\ud800"}'), 2, ("--payload", "surrogate")),
        (("submit", "work", "--max-retries", "-1"), 2, ("--max-retries",)),
        (("submit", "no spaces"), 2, ("TYPE",)),
        (("tasks", "list", "--url", "http://127.0.0.1:1"), 2, ("--url and --config",)),
        (("dead-letters", "requeue"), 2, ("--all",)),
    ]
    (args, code, words), *rest = cases
    refused(cli(*args, *config, cwd=tmp_path), code, *words)
    for args, code, words in rest:
        refused(here(capsys, *args, *config), code, *words)
    # argparse's own usage errors: status 2 as well
    with pytest.raises(SystemExit) as exited:
        main(["tasks", "list", "--limit", "0", *config])
    assert exited.value.code == 2
    assert "--limit: must be 1 to 1000" in capsys.readouterr().err


def test_an_unreachable_postgres_is_one_line_within_the_timeout(tmp_path: Path) -> None:
    storage = {"backend": "postgres", "postgres_dsn": "postgresql://postgres@127.0.0.1:1/test"}
    config = ["--config", str(config_file(tmp_path, storage)), "--request-timeout", "1"]
    # psycopg's pool logs each failed attempt: none of it reaches the terminal.
    refused(cli("tasks", "list", *config, cwd=tmp_path), 4, "storage unavailable", "connect")


# --- watch under a pseudo-terminal --------------------------------------------------------------


def read_pty(
    command: list[str], cwd: Path, env: dict[str, str], until: str, seen: anyio.Event
) -> tuple[int, str]:
    """Runs ``command`` with a pseudo-terminal as its stdin, stdout and stderr; returns its
    status and everything it wrote, read until it exited. Sets ``seen`` (in the event
    loop that called this thread) once the output shows ``until``."""
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdin=secondary, stdout=secondary, stderr=secondary
    )
    os.close(secondary)
    screen = b""
    try:
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError as exc:  # EIO: the process closed the terminal
                if exc.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            screen += chunk
            if not seen.is_set() and until.encode() in screen:
                anyio.from_thread.run_sync(seen.set)
    finally:
        os.close(primary)
        anyio.from_thread.run_sync(seen.set)  # the test goes on either way
    return process.wait(timeout=30), screen.decode(errors="replace")


async def watch_in_a_terminal(
    command: list[str], cwd: Path, env: dict[str, str], until: str, then: Callable[[], Any]
) -> tuple[int, str]:
    """Runs ``command`` under a pseudo-terminal; once its screen shows ``until``, awaits
    ``then()``; returns its status and screen."""
    seen = anyio.Event()
    result: list[tuple[int, str]] = []

    async def run() -> None:
        result.append(await anyio.to_thread.run_sync(read_pty, command, cwd, env, until, seen))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await seen.wait()
            await then()
    return result[0]


class Gate:
    """A task that reports half its progress, then waits for the test to open the gate."""

    def __init__(self) -> None:
        self.halfway = anyio.Event()
        self.open = anyio.Event()

    async def __call__(self, context: TaskContext) -> str:
        await context.update_progress(0.5, "halfway there")
        self.halfway.set()
        await self.open.wait()
        if context.payload.get("fail"):
            raise ValueError("failed on purpose")
        await context.update_progress(1.0, "all done")
        return "finished"


def pty_env() -> dict[str, str]:
    return clean_env(TERM="xterm-256color", COLUMNS="120", LINES="40")


@pytest.mark.parametrize(
    ("outcome", "backend"),
    [
        ("completed", "sqlite"),
        ("failed", "sqlite"),
        ("cancelled", "sqlite"),
        ("completed", "postgres"),
    ],
)
async def test_watch_draws_a_progress_bar_until_the_task_ends(
    tmp_path: Path, outcome: str, storage: dict[str, Any]
) -> None:
    """A worker in this process runs the task; `watch` in another reads its progress from
    the database."""
    config = config_file(tmp_path, storage)
    gate = Gate()
    async with TaskManager(make_settings(tmp_path, storage=storage)) as manager:
        manager.register("gated", gate)
        context = await manager.submit(
            TaskDefinition(name="gated", task_type="gated"), fail=outcome == "failed"
        )
        command = [*CLI, "watch", context.task_id, "--config", str(config), "--interval", "0.05"]

        async def then() -> None:
            if outcome == "cancelled":
                await manager.cancel(context.task_id)
            gate.open.set()

        await gate.halfway.wait()
        status, screen = await watch_in_a_terminal(
            command, tmp_path, pty_env(), "halfway there", then
        )
    assert status == {"completed": 0, "failed": 1, "cancelled": 7}[outcome], screen
    assert "halfway there" in screen  # the live bar, mid-way
    assert "50%" in screen
    assert "\x1b[" in screen  # drawn for a terminal, with control codes
    assert "Traceback" not in screen
    if outcome == "completed":
        assert "100%" in screen
        assert f"completed {context.task_id}" in screen
        assert '"finished"' in screen
    elif outcome == "failed":
        assert f"failed {context.task_id}: ValueError: failed on purpose" in screen
    else:
        assert f"cancelled {context.task_id}" in screen


# --- against a server ---------------------------------------------------------------------------


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[str, Settings, Gate]]:
    """A real uvicorn server with an API key, running `work`, `boom` and `gated` tasks."""
    settings = make_settings(tmp_path, http={"api_key": API_KEY})
    gate = Gate()

    def setup(manager: TaskManager) -> None:
        register(manager)
        manager.register("gated", gate)

    async with serve(create_app(settings, setup=setup)) as url:
        yield url, settings, gate


async def test_each_command_against_a_server(
    tmp_path: Path, server: tuple[str, Settings, Gate], capsys: pytest.CaptureFixture[str]
) -> None:
    url, settings, _ = server
    env = clean_env(VPSWEB_TASKS_API_KEY=API_KEY)

    async def run(*commands: tuple[str, ...]) -> list[Done]:
        return await acli_many(*[(*c, "--url", url) for c in commands], cwd=tmp_path, env=env)

    work_done, boom_1, boom_2, keyed = await run(
        ("submit", "work", "--payload", '{"n": 4}', "--json", "--watch"),
        ("submit", "boom", "--watch", "--json"),
        ("submit", "boom", "--watch", "--json"),
        ("submit", "work", "--delay", "3600", "--json", "--idempotency-key", "k1"),
    )
    done = ok(work_done)
    assert (done["status"], done["result"]) == ("completed", {"doubled": 8})
    for watched in (boom_1, boom_2):
        assert watched.returncode == 1, watched.stderr  # watched, and the task failed
    failed = [json.loads(watched.stdout) for watched in (boom_1, boom_2)]
    assert {f["error"]["message"] for f in failed} == {"the input is bad"}
    later = ok(keyed)

    storage = {"backend": "sqlite", "sqlite_path": str(settings.storage.sqlite_path)}
    config = str(config_file(tmp_path, storage))
    f0 = failed[0]["task_id"]
    again, listed, pending, shown, letters = await run(
        ("submit", "work", "--delay", "3600", "--json", "--idempotency-key", "k1"),
        ("tasks", "list", "--json"),
        ("tasks", "list", "--json", "--status", "pending", "--type", "work", "--limit", "5"),
        ("tasks", "show", f0, "--json"),
        ("dead-letters", "list", "--type", "boom", "--json"),
    )
    assert (ok(again)["task_id"], ok(again)["replayed"]) == (later["task_id"], True)
    by_finish = sorted([done, *failed], key=lambda view: view["finished_at"], reverse=True)
    expected = [later["task_id"], *[view["task_id"] for view in by_finish]]
    assert [t["task_id"] for t in ok(listed)] == expected
    assert [t["task_id"] for t in ok(pending)] == [later["task_id"]]
    # The same task reads the same over HTTP and from the database directly.
    direct = ok(await acli("tasks", "show", f0, "--json", "--config", config, cwd=tmp_path))
    assert {key: ok(shown)[key] for key in direct} == direct
    dead = [view["task_id"] for view in by_finish if view["status"] == "failed"]
    assert [t["task_id"] for t in ok(letters)] == dead
    key = ["--url", url, "--api-key", API_KEY]
    unknown = await ahere(capsys, "tasks", "show", "no-such-task", *key)
    refused(unknown, 3, "task not found: no-such-task")
    refused(await ahere(capsys, "tasks", "retry", done["task_id"], *key), 6, "it is completed")
    too_many = await ahere(capsys, "submit", "work", "--max-retries", "500", *key)
    refused(too_many, 2, "--max-retries")  # the server's 422, named by the option
    no_type = await ahere(capsys, "submit", "no_such_type", *key)
    refused(no_type, 2, "TYPE", "unknown task type")

    (paused,) = await run(("queue", "pause", "--json", "--reason", "deploying"))
    assert (ok(paused)["paused"], ok(paused)["pause_reason"]) == (True, "deploying")
    retried, requeued, cancelled = await run(
        ("tasks", "retry", f0, "--json"),
        ("dead-letters", "requeue", failed[1]["task_id"], "--json"),
        ("tasks", "cancel", later["task_id"], "--json"),
    )
    assert ok(retried)["status"] == "pending"
    assert ok(requeued)["requeued"] == 1
    assert [t["task_id"] for t in ok(requeued)["tasks"]] == [failed[1]["task_id"]]
    assert ok(cancelled)["status"] == "cancelled"
    (cleared,) = await run(("queue", "clear", "--json"))
    assert ok(cleared) == {"cancelled": 2}  # the two requeued, held by the pause
    (resumed,) = await run(("queue", "resume"))
    assert resumed.stdout == "queue running: 0 waiting, 0 running\n", resumed.stderr

    # The options are the HTTP body's names: the server stores them and names them back.
    (keyed,) = await run(
        ("submit", "work", "--depends-on", f0, "--concurrency-key", "user:7", "--json")
    )
    (shown,) = await run(("tasks", "show", ok(keyed)["task_id"], "--json"))
    assert (ok(shown)["depends_on"], ok(shown)["concurrency_key"]) == ([f0], "user:7")
    nowhere = await ahere(capsys, "submit", "work", "--queue", "nowhere", *key)
    refused(nowhere, 2, "--queue", "unknown queue")


async def test_watch_follows_a_task_over_http(
    tmp_path: Path, server: tuple[str, Settings, Gate]
) -> None:
    """The task's event stream draws the bar (the server runs the task)."""
    url, _, gate = server
    env = {**pty_env(), "VPSWEB_TASKS_API_KEY": API_KEY}
    submitted = await acli("submit", "gated", "--url", url, cwd=tmp_path, env=env)
    task_id = submitted.stdout.strip()
    assert submitted.returncode == 0, submitted.stderr
    # A poll interval longer than the test: the end came over the event stream.
    command = [*CLI, "watch", task_id, "--url", url, "--interval", "60"]

    async def then() -> None:
        gate.open.set()

    status, screen = await watch_in_a_terminal(command, tmp_path, env, "halfway there", then)
    assert status == 0, screen
    assert "100%" in screen
    assert f"completed {task_id}" in screen


async def test_a_wrong_key_or_no_server_is_one_line(
    tmp_path: Path, server: tuple[str, Settings, Gate], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _, _ = server
    wrong = clean_env(VPSWEB_TASKS_API_KEY="wrong")
    line = refused(await acli("tasks", "list", "--url", url, cwd=tmp_path, env=wrong), 5)
    assert "refused the API key (401" in line
    closed = "http://127.0.0.1:9"
    refused(await acli("queue", "pause", "--url", closed, cwd=tmp_path), 4, "cannot reach")
    refused(await ahere(capsys, "tasks", "list", "--url", url), 5, "--api-key")
    no_api = f"{url}/not/here"
    listed = await ahere(capsys, "tasks", "list", "--url", no_api, "--api-key", API_KEY)
    refused(listed, 4, "no vpsweb-tasks API at")
    refused(await ahere(capsys, "watch", "x", "--url", "ftp://host"), 2, "--url")
