"""OpenTelemetry traces (vpsweb_tasks.tracing), read with the SDK's in-memory exporter:
a submit span in the caller's trace, the attempt span of a real worker process in that
same trace (through the context stored with the task), errors with their category, the
translation steps' GenAI spans, and nothing at all without a provider or the API."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from vpsweb_tasks import TaskContext, TaskDefinition, TaskManager, TaskStatus, tracing
from vpsweb_tasks.config import Settings
from vpsweb_tasks.translation import get_vpsweb_adapter
from vpsweb_tasks_http import create_app

from .http_server import serve
from .llm_server import fake_llm
from .mp_support import ROOT, Worker, write_config
from .otel_support import installed_provider, read_spans, span_dict
from .test_translation import DOCUMENT_REQUEST, make_manager, provider

pytestmark = pytest.mark.anyio


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with installed_provider() as exporter:
        yield exporter


def finished(exporter: InMemorySpanExporter) -> list[dict[str, Any]]:
    return [span_dict(span) for span in exporter.get_finished_spans()]


def named(found: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [span for span in found if span["name"] == name]


async def test_attempt_span_is_a_child_of_the_submit_span_in_the_callers_trace(
    spans: InMemorySpanExporter, settings_factory: Callable[..., Settings]
) -> None:
    async with TaskManager(settings_factory()) as manager:

        @manager.task("flaky")
        async def flaky(context: TaskContext) -> str:
            with trace.get_tracer("tests").start_as_current_span("inside"):
                if context.attempt == 1:
                    raise ConnectionError("provider unreachable")
            return "ok"

        @manager.task("broken")
        async def broken(context: TaskContext) -> None:
            raise ValueError("the poem is empty")

        with trace.get_tracer("tests").start_as_current_span("caller") as caller:
            flaky_task = await manager.submit(TaskDefinition(name="f", task_type="flaky"))
            broken_task = await manager.submit(TaskDefinition(name="b", task_type="broken"))
        assert (await flaky_task.wait()).status is TaskStatus.COMPLETED
        assert (await broken_task.wait()).status is TaskStatus.FAILED
        stored = await manager.get_task(flaky_task.task_id)

    trace_id = f"{caller.get_span_context().trace_id:032x}"
    caller_id = f"{caller.get_span_context().span_id:016x}"
    found = finished(spans)
    assert {span["trace_id"] for span in found} == {trace_id}, "one trace holds everything"
    (submit,) = [s for s in named(found, "submit flaky")]
    assert submit["parent_id"] == caller_id
    assert submit["kind"] == "PRODUCER"
    assert submit["attributes"]["vpsweb_tasks.task.id"] == flaky_task.task_id
    assert submit["attributes"]["messaging.operation.name"] == "send"
    # The context stored with the task is the submit span's (W3C traceparent).
    assert stored.trace_context is not None
    version, stored_trace, parent, _flags = stored.trace_context["traceparent"].split("-")
    assert (version, stored_trace, parent) == ("00", trace_id, submit["span_id"])

    attempts = named(found, "run flaky")
    assert [a["attributes"]["vpsweb_tasks.task.attempt"] for a in attempts] == [1, 2]
    assert {a["parent_id"] for a in attempts} == {submit["span_id"]}
    assert {a["kind"] for a in attempts} == {"CONSUMER"}
    first, second = attempts
    assert first["status"] == "ERROR"
    assert first["attributes"]["error.type"] == "ConnectionError"
    assert first["attributes"]["vpsweb_tasks.error.category"] == "network"
    assert first["attributes"]["vpsweb_tasks.will_retry"] is True
    assert first["attributes"]["vpsweb_tasks.outcome"] == "failed"
    (event,) = first["events"]
    assert event["name"] == "exception"
    assert event["attributes"]["exception.message"] == "provider unreachable"
    assert "ConnectionError" in event["attributes"]["exception.stacktrace"]
    assert second["status"] == "UNSET"
    assert second["attributes"]["vpsweb_tasks.outcome"] == "completed"
    # The task's own spans are children of its attempt.
    inside = named(found, "inside")
    assert [s["parent_id"] for s in inside] == [first["span_id"], second["span_id"]]

    (dead,) = named(found, "run broken")
    assert dead["attributes"]["vpsweb_tasks.error.category"] == "validation"
    assert dead["attributes"]["vpsweb_tasks.will_retry"] is False


async def test_a_batch_is_one_submit_span(
    spans: InMemorySpanExporter, settings_factory: Callable[..., Settings]
) -> None:
    async with TaskManager(settings_factory(background_tasks={"enabled": False})) as manager:
        manager.register("a", _never)
        manager.register("b", _never)
        contexts = await manager.submit_batch(
            [TaskDefinition(name="x", task_type="a"), TaskDefinition(name="y", task_type="b")]
        )
        records = [await manager.get_task(c.task_id) for c in contexts]
    (submit,) = finished(spans)
    assert submit["name"] == "submit"
    assert submit["parent_id"] is None  # no caller's span: the submit starts a trace
    assert submit["attributes"]["messaging.batch.message_count"] == 2
    assert list(submit["attributes"]["vpsweb_tasks.task.ids"]) == [c.task_id for c in contexts]
    parents = {r.trace_context["traceparent"].split("-")[2] for r in records if r.trace_context}
    assert parents == {submit["span_id"]}


async def _never(context: TaskContext) -> None:
    raise AssertionError("an API-only process runs no tasks")


async def test_no_provider_no_spans_and_nothing_stored(
    settings_factory: Callable[..., Settings],
) -> None:
    assert not tracing.enabled()
    async with TaskManager(settings_factory()) as manager:
        context = await manager.submit(TaskDefinition(name="c", task_type="cleanup"))
        record = await context.wait()
    assert record.status is TaskStatus.COMPLETED
    assert record.trace_context is None


def test_without_the_api_nothing_is_imported(tmp_path: Path) -> None:
    """With opentelemetry not importable (the extra absent), tasks run and no tracing
    module is imported."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["opentelemetry"] = None  # what an absent package looks like to import
        import anyio
        from vpsweb_tasks import TaskDefinition, TaskManager, load_config, tracing

        async def main():
            settings = load_config(
                storage={{"sqlite_path": {str(tmp_path / "t.db")!r}}}, logging={{"file": None}}
            )
            async with TaskManager(settings) as manager:
                task = await manager.submit(TaskDefinition(name="c", task_type="cleanup"))
                record = await task.wait()
            assert record.status.value == "completed", record
            assert record.trace_context is None
            assert not tracing.enabled()
            assert tracing.current_ids() is None
            loaded = [m for m in sys.modules if m.startswith("opentelemetry.")]
            assert not loaded, loaded
            print("ok")

        anyio.run(main)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "ok", out.stderr


async def test_translation_steps_are_genai_chat_spans(
    spans: InMemorySpanExporter, settings_factory: Callable[..., Settings]
) -> None:
    from vpsweb_tasks.breakers import BreakerRegistry

    async with fake_llm() as llm:
        settings = settings_factory(providers=provider(llm))
        async with make_manager(settings, BreakerRegistry()) as manager:
            job = await get_vpsweb_adapter(manager).submit(DOCUMENT_REQUEST)
            record = await manager.wait(job.job_id, timeout=10)
            assert record.status is TaskStatus.COMPLETED, record.error_message
    found = finished(spans)
    (attempt,) = named(found, "run translation")
    chats = [span for span in found if span["name"].startswith("chat ")]
    assert [span["name"] for span in chats] == [
        "chat m-initial",
        "chat m-editor",
        "chat m-revision",
    ]
    for span, step in zip(
        chats, ["initial_translation", "editor_review", "translator_revision"], strict=True
    ):
        attributes = span["attributes"]
        assert span["kind"] == "CLIENT"
        assert span["parent_id"] == attempt["span_id"]
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.provider.name"] == "local"
        assert attributes["gen_ai.request.model"] == span["name"].removeprefix("chat ")
        assert attributes["gen_ai.response.model"] == span["name"].removeprefix("chat ")
        assert attributes["gen_ai.usage.input_tokens"] == 10  # as the fake LLM reports
        assert attributes["gen_ai.usage.output_tokens"] == 5
        assert attributes["server.address"] == "127.0.0.1"
        assert attributes["server.port"] == llm.port
        assert attributes["vpsweb_tasks.translation.step"] == step


async def test_a_failed_llm_call_records_its_error(
    spans: InMemorySpanExporter, settings_factory: Callable[..., Settings]
) -> None:
    from vpsweb_tasks.breakers import BreakerRegistry

    from .llm_server import Reply

    async with fake_llm() as llm:
        llm.always(Reply(status=401))
        settings = settings_factory(providers=provider(llm))
        async with make_manager(settings, BreakerRegistry()) as manager:
            job = await get_vpsweb_adapter(manager).submit(DOCUMENT_REQUEST)
            record = await manager.wait(job.job_id, timeout=10)
    assert record.status is TaskStatus.FAILED
    (chat,) = [span for span in finished(spans) if span["name"] == "chat m-initial"]
    assert chat["status"] == "ERROR"
    assert chat["attributes"]["error.type"] == "ProviderAuthError"
    assert chat["attributes"]["vpsweb_tasks.error.category"] == "permission"


# --- across processes ----------------------------------------------------------------------


@pytest.fixture
async def worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Worker, Path, Path]]:
    """A ``vpsweb-tasks worker --import tests.otel_worker`` process, exporting its spans to
    a file."""
    config = write_config(tmp_path / "config.yaml", {"sqlite_path": str(tmp_path / "tasks.db")})
    spans_file = tmp_path / "spans.jsonl"
    monkeypatch.setenv("OTEL_SPANS_FILE", str(spans_file))  # the worker inherits it
    process = Worker(
        config, tmp_path / "runs.log", tmp_path / "worker.stderr", ("--import", "tests.otel_worker")
    )
    try:
        yield process, config, spans_file
    finally:
        process.close()


@pytest.mark.slow
async def test_a_worker_processs_attempt_span_is_in_the_submitting_requests_trace(
    spans: InMemorySpanExporter,
    worker: tuple[Worker, Path, Path],
    settings_factory: Callable[..., Settings],
) -> None:
    process, config, spans_file = worker
    await process.ready()
    settings = settings_factory(
        storage={"sqlite_path": str(config.parent / "tasks.db")},
        background_tasks={"enabled": False},
    )
    app = create_app(settings, setup=lambda manager: manager.register("traced", _never))
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        with trace.get_tracer("tests").start_as_current_span("client request") as request:
            headers: dict[str, str] = {}
            propagate.inject(headers)
        response = await client.post(
            "/api/v1/background-tasks/submit",
            json={"task_name": "t", "task_type": "traced"},
            headers=headers,
        )
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        with anyio.fail_after(30):
            # Another process writes the file: poll it (no event crosses processes).
            while not named(read_spans(spans_file), "inside the task"):  # noqa: ASYNC110
                await anyio.sleep(0.02)
        status = (await client.get(f"/api/v1/background-tasks/status/{task_id}")).json()
    assert status["status"] == "completed"
    assert status["result"] == task_id

    trace_id = f"{request.get_span_context().trace_id:032x}"
    ours = {span["span_id"]: span for span in finished(spans)}
    (submit,) = named(list(ours.values()), "submit traced")
    assert submit["trace_id"] == trace_id
    # Its ancestors: FastAPI's own spans of the request (a server span in the trace its
    # traceparent names, then the endpoint's), then the client's span.
    chain, parent = [], submit["parent_id"]
    while parent in ours:
        chain.append((ours[parent]["name"], ours[parent]["kind"]))
        parent = ours[parent]["parent_id"]
    assert chain == [
        ("fastapi.endpoint", "INTERNAL"),
        ("POST /api/v1/background-tasks/submit", "SERVER"),
        ("client request", "INTERNAL"),
    ]
    theirs = read_spans(spans_file)
    (attempt,) = named(theirs, "run traced")
    (inside,) = named(theirs, "inside the task")
    assert attempt["pid"] == process.process.pid != os.getpid()
    assert attempt["trace_id"] == trace_id
    assert attempt["parent_id"] == submit["span_id"]
    assert attempt["attributes"]["vpsweb_tasks.worker.id"] == process.worker_id
    assert inside["trace_id"] == trace_id
    assert inside["parent_id"] == attempt["span_id"]
    assert await process.stop() == 0
