"""Schemathesis over the app's own OpenAPI schema, against the real server: for every
operation, no 5xx and no response that violates its schema."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from vpsweb_tasks import TaskContext, TaskManager
from vpsweb_tasks.config import Settings
from vpsweb_tasks_http import create_app

from .http_server import serve

pytestmark = pytest.mark.anyio


def setup(manager: TaskManager) -> None:
    @manager.task("data_processing")
    async def data_processing(context: TaskContext) -> dict[str, int]:
        await context.update_progress(0.5, "halfway")
        return {"rows": 1}


async def test_no_server_errors_and_every_response_matches_its_schema(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st is not None, "schemathesis is a dev dependency"
    app = create_app(settings_factory(background_tasks={"max_queue_size": 1000}), setup=setup)
    async with serve(app) as base_url:
        result = await anyio.run_process(
            [
                st,
                "run",
                f"{base_url}/openapi.json",
                "--checks",
                "not_a_server_error,status_code_conformance,response_schema_conformance,"
                "content_type_conformance,response_headers_conformance,negative_data_rejection",
                # The monitoring stream never ends on its own; it has its own tests.
                "--exclude-path-regex",
                "/monitoring/events$",
                "--phases",
                "coverage,fuzzing",
                "--max-examples",
                "5",
                "--seed",
                "20261129",
                "--workers",
                "1",
                "--no-color",
                "--report-dir",
                str(tmp_path),
            ],
            check=False,
            cwd=tmp_path,  # schemathesis keeps a cache folder in its working directory
        )
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output[-6000:]
