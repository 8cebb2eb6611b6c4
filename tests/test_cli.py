"""The ``vpsweb-tasks`` command, in process (workers run as real processes in
test_multiprocess.py)."""

from __future__ import annotations

import importlib.util
import json
import logging
import socket
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

import vpsweb_tasks.manager
from vpsweb_tasks import TaskDefinition, TaskManager, load_config
from vpsweb_tasks.cli import main
from vpsweb_tasks.cli.pool import restart_delay


@pytest.fixture
def worker_side_effects(monkeypatch: pytest.MonkeyPatch) -> None:
    """`worker` sets the process-wide manager and a stderr log handler: undo both."""
    monkeypatch.setattr(vpsweb_tasks.manager, "_default", None)
    library = logging.getLogger("vpsweb_tasks")
    monkeypatch.setattr(library, "handlers", list(library.handlers))
    monkeypatch.setattr(library, "level", library.level)


def config_file(tmp_path: Path, storage: dict[str, Any] | None = None) -> Path:
    path = tmp_path / "config.yaml"
    storage = storage or {"sqlite_path": str(tmp_path / "tasks.db")}
    path.write_text(yaml.safe_dump({"storage": storage, "logging": {"file": None}}))
    return path


def test_status_reads_counts_workers_and_pause_from_the_database(
    tmp_path: Path, storage: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_file(tmp_path, storage)

    async def fill() -> str:
        async with TaskManager(load_config(config)) as manager:

            async def noop(context: object) -> None:
                return None

            manager.register("noop", noop)
            await manager.pause("deploying")
            for _ in range(3):
                await manager.submit(TaskDefinition(name="n", task_type="noop"))
            return manager.worker_id

    anyio.run(fill, backend="asyncio")
    assert main(["status", "--config", str(config), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == storage["backend"]
    assert (report["paused"], report["pause_reason"]) == (True, "deploying")
    assert report["tasks"]["pending"] == 3
    assert report["waiting"] == 3
    assert report["workers"] == []  # the manager removed its row when it stopped

    assert main(["status", "--config", str(config)]) == 0
    table = capsys.readouterr().out
    assert "paused (deploying), 3 waiting" in table
    assert "pending 3" in table


def test_status_of_a_missing_database_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--config", str(config_file(tmp_path))]) == 1
    assert "no database" in capsys.readouterr().err
    assert not (tmp_path / "tasks.db").exists()


@pytest.mark.usefixtures("worker_side_effects")
def test_worker_refuses_a_module_it_cannot_import(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(config_file(tmp_path))
    assert main(["worker", "--config", config, "--import", "no_such_module_here"]) == 2
    assert "cannot import no_such_module_here" in capsys.readouterr().err


@pytest.mark.usefixtures("worker_side_effects")
def test_worker_refuses_a_metrics_port_it_cannot_listen_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(config_file(tmp_path))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["worker", "--config", config, "--metrics-port", str(port)]) == 2
    assert f"--metrics-port {port}: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.usefixtures("worker_side_effects")
def test_a_bad_config_is_reported_with_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(config_file(tmp_path))
    assert main(["worker", "--config", config, "--concurrency", "0"]) == 2
    assert "--concurrency" in capsys.readouterr().err
    assert main(["status", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


@pytest.mark.usefixtures("worker_side_effects")
def test_a_pool_of_fewer_than_one_process_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_file(tmp_path)
    assert main(["worker", "--config", str(config), "--processes", "0"]) == 2
    assert "--processes: must be at least 1, not 0" in capsys.readouterr().err
    settings = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**settings, "background_tasks": {"worker_processes": 0}}))
    assert main(["worker", "--config", str(config)]) == 2
    assert "background_tasks.worker_processes" in capsys.readouterr().err
    assert not (tmp_path / "tasks.db").exists()  # refused before anything started


@pytest.mark.usefixtures("worker_side_effects")
def test_asking_for_uvloop_where_it_is_not_installed_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else real(name, *a)
    )
    config = str(config_file(tmp_path))
    assert main(["worker", "--config", config, "--loop", "uvloop"]) == 2
    assert "--loop uvloop: uvloop is not installed" in capsys.readouterr().err
    assert not (tmp_path / "tasks.db").exists()  # refused before anything started


@pytest.mark.usefixtures("worker_side_effects")
def test_an_extension_it_cannot_load_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(config_file(tmp_path))
    for path, message in [
        ("no_such_module_here:Thing", "No module named 'no_such_module_here'"),
        ("vpsweb_tasks:NoSuchThing", "NoSuchThing"),
        ("vpsweb_tasks:TaskManager", "not a vpsweb_tasks Extension"),
        ("no_colon", "is not of the form module:name"),
    ]:
        assert main(["worker", "--config", config, "--extension", path]) == 2
        assert "--extension: " in (err := capsys.readouterr().err), err
        assert message in err
    assert not (tmp_path / "tasks.db").exists()  # refused before anything started


def test_a_pool_restarts_a_child_that_keeps_dying_ever_more_slowly() -> None:
    delays = [restart_delay(quick_deaths) for quick_deaths in range(1, 10)]
    assert delays[:4] == [0.0, 0.5, 1.0, 2.0]  # the first replacement starts at once
    assert delays == sorted(delays)
    assert max(delays) == 30.0
