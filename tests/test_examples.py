"""The examples run as written: the document's HTTP examples against a real server, the
library examples on their own."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from vpsweb_tasks import TaskStatus
from vpsweb_tasks.config import Settings
from vpsweb_tasks_http import create_app

from .http_server import serve
from .llm_server import fake_llm

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def run_example(
    name: str, *args: str, cwd: Path, url: str | None = None, status: int = 0
) -> str:
    """Its standard output (and standard error, for an expected failure)."""
    env = {**os.environ, "VPSWEB_TASKS_URL": url or "http://unused"}
    env.pop("VPSWEB_TASKS_CONFIG", None)
    result = await anyio.run_process(
        [sys.executable, str(EXAMPLES / name), *args], cwd=cwd, env=env, check=False
    )
    output = result.stdout.decode()
    assert result.returncode == status, output + result.stderr.decode()
    return output if status == 0 else output + result.stderr.decode()


async def test_the_documents_http_examples_against_a_real_server(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory(background_tasks={"data_dir": str(tmp_path / "data")})
    app = create_app(settings)
    async with serve(app) as url:
        submitted = await run_example("submit_task.py", cwd=tmp_path, url=url)
        assert submitted.startswith("Task submitted: ")
        task_id = submitted.split(": ", 1)[1].strip()
        record = await app.state.manager.wait(task_id, timeout=10)
        assert record.status is TaskStatus.COMPLETED, record.error_message
        assert record.result["rows"] == 100
        converted = json.loads((tmp_path / "data" / "output" / "data.json").read_text())
        assert converted[0] == {"poem_id": "1", "title": "Poem 1", "lines": "4"}

        progress = await run_example("monitor_progress.py", task_id, cwd=tmp_path, url=url)
        assert progress.strip() == "Task progress: 100.0% - wrote data.json"

        health = await run_example("system_health.py", cwd=tmp_path, url=url)
        lines = health.splitlines()
        assert lines[0] in (
            "System status: healthy",
            "System status: degraded",
            "System status: unhealthy",
        )
        assert lines[1].startswith("CPU usage: ")
        assert lines[3] == "Active tasks: 0"


async def test_the_custom_task_example_runs_on_its_own(tmp_path: Path) -> None:
    output = await run_example("custom_task.py", cwd=tmp_path)
    assert output.strip() == (
        "Custom Data Processing: completed -> {'status': 'success', 'records_processed': 100}"
    )
    assert (tmp_path / "vpsweb_tasks.db").exists()


async def test_the_quickstart_runs(tmp_path: Path) -> None:
    output = await run_example("quickstart.py", cwd=tmp_path)
    outcomes = output.split("outcomes:")[1]
    assert outcomes.count("completed") == 5
    assert "attempts=2" in outcomes  # the flaky one was retried
    assert "will retry" in output
    # Each task's lines carry an id that tells it from the others.
    started = [line.split()[1] for line in output.splitlines() if " started " in line]
    assert len(started) == 6  # five tasks, one of them twice
    assert len(set(started)) == 5


async def test_the_documents_translation_example_against_a_real_server(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    async with fake_llm() as llm:
        provider = {"base_url": llm.base_url, "models": {"default": "m-initial"}, "timeout": 5}
        app = create_app(settings_factory(providers={"local": provider}))
        async with serve(app) as url:
            output = await run_example("submit_translation.py", "--wait", cwd=tmp_path, url=url)
            lines = output.splitlines()
            assert lines[0].startswith("Translation job submitted: ")
            job_id = lines[0].split(": ", 1)[1]
            record = await app.state.manager.wait(job_id, timeout=10)
    assert record.status is TaskStatus.COMPLETED
    assert lines[-2:] == ["completed", "Final translation: m-initial translation, call 3"]
    # Even when the job is done before the script's stream connects, every step shows.
    assert lines[1:-2] == ["step_start", "step_complete"] * 3
    assert len(llm.calls) == 3


async def test_the_examples_say_what_went_wrong(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """No provider configured: the translation example prints the server's 503 message;
    the progress example without a task id prints its usage, with an unknown one the
    server's 404 message."""
    app = create_app(settings_factory())
    async with serve(app) as url:
        refused = await run_example("submit_translation.py", cwd=tmp_path, url=url, status=1)
        assert "server said (503):" in refused
        assert "provider" in refused  # the server's own words: what to configure
        assert "KeyError" not in refused
        usage = await run_example("monitor_progress.py", cwd=tmp_path, url=url, status=1)
        assert usage.startswith("usage: python ")
        unknown = await run_example(
            "monitor_progress.py", "not-a-task", cwd=tmp_path, url=url, status=1
        )
        assert unknown.startswith("server said: ")
        assert "not-a-task" in unknown
