"""Translation jobs over real HTTP: a uvicorn server (the API) and a loopback
OpenAI-compatible server (the LLM provider), driven by httpx."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from vpsweb_tasks import BreakerConfig, BreakerRegistry, TaskManager, TaskStatus
from vpsweb_tasks.config import Settings
from vpsweb_tasks.translation import TranslationExtension, VPSWebAdapter
from vpsweb_tasks_http import create_app

from .http_server import serve
from .llm_server import HOLD, FakeLLM, Reply, fake_llm
from .stepped_workflow import Stepper
from .test_http import read_events
from .test_translation import DOCUMENT_REQUEST, provider

pytestmark = pytest.mark.anyio

TASKS = "/api/v1/background-tasks"
TRANSLATION = f"{TASKS}/translation"


@dataclass
class Api:
    client: httpx.AsyncClient
    manager: TaskManager
    llm: FakeLLM


async def start(settings: Settings, llm: FakeLLM) -> AsyncIterator[Api]:
    manager = TaskManager(
        settings,
        breakers=BreakerRegistry(BreakerConfig()),
        extensions=[TranslationExtension()],
    )
    app = create_app(settings, manager=manager)
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        yield Api(client, manager, llm)


@pytest.fixture
async def api(settings_factory: Callable[..., Settings]) -> AsyncIterator[Api]:
    async with fake_llm() as llm:
        settings = settings_factory(providers=provider(llm))
        async for running in start(settings, llm):
            yield running


@pytest.fixture
async def unconfigured(settings_factory: Callable[..., Settings]) -> AsyncIterator[Api]:
    async with fake_llm() as llm:
        async for running in start(settings_factory(), llm):
            yield running


async def test_the_documents_translation_example_works_unchanged(api: Api) -> None:
    response = await api.client.post(TRANSLATION, json=DOCUMENT_REQUEST)
    assert response.status_code == 202, response.text
    submitted = response.json()
    job_id = submitted["job_id"]
    assert (submitted["source_language"], submitted["target_language"]) == ("English", "Chinese")
    assert submitted["status"] == "pending"
    await api.manager.wait(job_id, timeout=10)

    status = (await api.client.get(submitted["status_url"])).json()
    assert status["status"] == "completed"
    assert status["steps_completed"] == [
        "initial_translation",
        "editor_review",
        "translator_revision",
    ]
    result = (await api.client.get(submitted["result_url"])).json()
    assert result["final_translation"] == "m-revision translation, call 3"
    assert [step["name"] for step in result["steps"]] == [
        "Initial Translation",
        "Editor Review",
        "Translator Revision",
    ]
    assert result["token_usage"]["total_tokens"] == 45
    assert result["metadata"] == {"author": "Test Author", "title": "Test Poem"}
    # The job is a task: the generic task routes know it by the same id.
    task = (await api.client.get(f"{TASKS}/status/{job_id}")).json()
    assert (task["task_type"], task["status"]) == ("translation", "completed")
    listed = (await api.client.get(TRANSLATION, params={"status": "completed"})).json()
    assert [job["job_id"] for job in listed["jobs"]] == [job_id]


async def test_the_detailed_event_stream_has_each_steps_details(api: Api) -> None:
    api.llm.reply(HOLD, model="m-initial")
    job_id = (await api.client.post(TRANSLATION, json=DOCUMENT_REQUEST)).json()["job_id"]
    await api.llm.wait_for_calls(1)
    async with api.client.stream(
        "GET", f"{TRANSLATION}/{job_id}/events?format=detailed"
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()
        [first] = await read_events(lines, lambda e: True)
        assert first["event"] == "status"
        snapshot = json.loads(first["data"])
        assert (snapshot["status"], snapshot["current_step"], snapshot["percent"]) == (
            "running",
            "initial_translation",
            0,
        )
        api.llm.release()
        events = await read_events(lines, lambda e: e["event"] in ("completed", "error"))
    steps = [
        (e["event"], json.loads(e["data"])["step_name"], json.loads(e["data"])["percent"])
        for e in events
        if e["event"].startswith("step_")
    ]
    assert steps == [
        ("step_complete", "Initial Translation", 33),
        ("step_start", "Editor Review", 33),
        ("step_complete", "Editor Review", 67),
        ("step_start", "Translator Revision", 67),
        ("step_complete", "Translator Revision", 100),
    ]
    assert {e["event"] for e in events} <= {"status", "step_start", "step_complete", "completed"}
    final = json.loads(events[-1]["data"])
    assert (events[-1]["event"], final["final_translation"]) == (
        "completed",
        "m-revision translation, call 3",
    )
    # A finished job's stream says so at once, and ends.
    async with api.client.stream(
        "GET", f"{TRANSLATION}/{job_id}/events?format=detailed"
    ) as response:
        replay = await read_events(response, lambda e: e["event"] == "completed")
    assert [e["event"] for e in replay] == ["status", "completed"]


async def test_failure_retry_and_cancel_over_http(api: Api) -> None:
    api.llm.reply(Reply(status=403), model="m-initial")
    job_id = (await api.client.post(TRANSLATION, json=DOCUMENT_REQUEST)).json()["job_id"]
    await api.manager.wait(job_id, timeout=10)
    async with api.client.stream("GET", f"{TRANSLATION}/{job_id}/events") as response:
        events = await read_events(response, lambda e: e["event"] == "error")
    error = json.loads(events[-1]["data"])
    assert (error["status"], error["error_category"]) == ("failed", "permission")
    assert "HTTP 403" in error["message"]
    early = await api.client.get(f"{TRANSLATION}/{job_id}/result")
    assert early.status_code == 409

    retried = await api.client.post(f"{TRANSLATION}/{job_id}/retry")
    assert retried.status_code == 200, retried.text
    await api.manager.wait(job_id, timeout=10)
    assert (await api.client.get(f"{TRANSLATION}/{job_id}")).json()["status"] == "completed"
    assert (await api.client.post(f"{TRANSLATION}/{job_id}/retry")).status_code == 409
    assert (await api.client.delete(f"{TRANSLATION}/{job_id}")).status_code == 409

    api.llm.reply(HOLD, model="m-initial")
    held = (await api.client.post(TRANSLATION, json=DOCUMENT_REQUEST)).json()["job_id"]
    await api.llm.wait_for_calls(5)
    cancelled = await api.client.delete(f"{TRANSLATION}/{held}")
    assert cancelled.status_code == 200
    # The server's own workers ran it: stopped before the answer, which says so.
    assert (cancelled.json()["status"], cancelled.json()["cancel_requested"]) == (
        "cancelled",
        False,
    )
    assert (await api.manager.wait(held, timeout=10)).status == "cancelled"
    await api.llm.wait_until(lambda s: s.disconnects == 1)

    for method, path in [
        ("GET", f"{TRANSLATION}/nope"),
        ("GET", f"{TRANSLATION}/nope/result"),
        ("POST", f"{TRANSLATION}/nope/retry"),
        ("DELETE", f"{TRANSLATION}/nope"),
        ("GET", f"{TRANSLATION}/nope/events"),
    ]:
        response = await api.client.request(method, path)
        assert response.status_code == 404, (method, path)
        assert response.json()["detail"] == "translation job not found: nope"


async def test_invalid_requests_are_422_naming_the_field(api: Api) -> None:
    cases: list[tuple[str, dict[str, Any], list[Any]]] = [
        (TRANSLATION, {**DOCUMENT_REQUEST, "target_language": "Klingon"}, ["target_language"]),
        (TRANSLATION, {**DOCUMENT_REQUEST, "original_text": ""}, ["original_text"]),
        (TRANSLATION, {**DOCUMENT_REQUEST, "workflow_mode": "fast"}, ["workflow_mode"]),
        (
            f"{TRANSLATION}/batch",
            {"requests": [DOCUMENT_REQUEST, {**DOCUMENT_REQUEST, "source_language": "xx"}]},
            ["requests", 1, "source_language"],
        ),
        (f"{TRANSLATION}/batch", {"requests": []}, ["requests"]),
        (
            f"{TRANSLATION}/compare",
            {**DOCUMENT_REQUEST, "workflow_modes": ["hybrid", "hybrid"]},
            ["workflow_modes"],
        ),
    ]
    for path, body, field in cases:
        body = {
            k: v for k, v in body.items() if not (path.endswith("compare") and k == "workflow_mode")
        }
        response = await api.client.post(path, json=body)
        assert response.status_code == 422, (path, response.text)
        locations = [error["loc"] for error in response.json()["detail"]]
        assert ["body", *field] in locations, (path, locations)
    assert (await api.client.get(TRANSLATION)).json()["count"] == 0
    assert api.llm.calls == []


async def test_batch_and_compare_over_http(api: Api) -> None:
    poems = [{**DOCUMENT_REQUEST, "original_text": f"poem {n}"} for n in range(2)]
    response = await api.client.post(f"{TRANSLATION}/batch", json={"requests": poems})
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["count"] == 2
    assert len(set(batch["job_ids"])) == 2
    for job_id in batch["job_ids"]:
        assert (await api.manager.wait(job_id, timeout=10)).status == "completed"

    body = {
        "original_text": "Hello world",
        "source_language": "en",
        "target_language": "zh-CN",
        "workflow_modes": ["hybrid", "non_reasoning"],
        "wait": True,
        "timeout": 10,
    }
    response = await api.client.post(f"{TRANSLATION}/compare", json=body)
    assert response.status_code == 200, response.text
    comparison = response.json()
    assert comparison["complete"]
    assert [e["workflow_mode"] for e in comparison["entries"]] == ["hybrid", "non_reasoning"]
    assert all(e["final_translation"] for e in comparison["entries"])
    ids = [e["job_id"] for e in comparison["entries"]]
    again = await api.client.get(f"{TRANSLATION}/compare", params={"job_id": ids})
    assert again.json() == comparison


async def test_a_batch_larger_than_the_free_room_is_429_and_leaves_nothing_behind(
    settings_factory: Callable[..., Settings], storage: dict[str, Any]
) -> None:
    async with fake_llm() as llm:
        settings = settings_factory(
            providers=provider(llm),
            background_tasks={"enabled": False, "max_queue_size": 3},
            storage=storage,
        )
        async for api in start(settings, llm):
            first = await api.client.post(TRANSLATION, json=DOCUMENT_REQUEST)
            assert first.status_code == 202, first.text
            poems = [{**DOCUMENT_REQUEST, "original_text": f"poem {n}"} for n in range(3)]
            response = await api.client.post(f"{TRANSLATION}/batch", json={"requests": poems})
            assert response.status_code == 429, response.text
            assert response.headers["retry-after"] == "5"
            detail = response.json()["detail"]
            assert "no room for 3 tasks: 1 waiting" in detail
            assert "max_queue_size=3" in detail
            modes = {"workflow_modes": ["hybrid", "reasoning", "non_reasoning"]}
            body = {k: v for k, v in DOCUMENT_REQUEST.items() if k != "workflow_mode"}
            compare = await api.client.post(f"{TRANSLATION}/compare", json={**body, **modes})
            assert compare.status_code == 429, compare.text
            # Nothing was stored, not even as cancelled jobs: one task, one job.
            listed = (await api.client.get(TRANSLATION)).json()
            assert [job["job_id"] for job in listed["jobs"]] == [first.json()["job_id"]]
            counts = await api.manager.store.count_tasks()
            assert (sum(counts.values()), counts[TaskStatus.PENDING]) == (1, 1)
            # What fits is accepted.
            fits = await api.client.post(f"{TRANSLATION}/batch", json={"requests": poems[:2]})
            assert fits.status_code == 202, fits.text
            assert fits.json()["count"] == 2
            assert (await api.client.get(TRANSLATION)).json()["count"] == 3


async def test_vpsweb_status_and_health(api: Api) -> None:
    status = (await api.client.get(f"{TASKS}/vpsweb/status")).json()
    assert status["configured"] is True
    assert (status["provider"], status["base_url"]) == ("local", api.llm.base_url)
    assert status["jobs"]["pending"] == 0
    health = (await api.client.get(f"{TASKS}/vpsweb/health")).json()
    assert (health["status"], health["reachable"]) == ("healthy", True)
    system = (await api.client.get(f"{TASKS}/health")).json()
    assert {"status", "cpu_usage", "memory_usage", "active_tasks"} <= set(system)


async def test_without_a_provider_submits_are_503_and_status_says_what_to_configure(
    unconfigured: Api,
) -> None:
    response = await unconfigured.client.post(TRANSLATION, json=DOCUMENT_REQUEST)
    assert response.status_code == 503
    assert "providers.<name>.base_url" in response.json()["detail"]
    assert response.json()["problems"]
    batch = await unconfigured.client.post(
        f"{TRANSLATION}/batch", json={"requests": [DOCUMENT_REQUEST]}
    )
    assert batch.status_code == 503
    status = (await unconfigured.client.get(f"{TASKS}/vpsweb/status")).json()
    assert status["configured"] is False
    assert "providers.<name>.base_url" in status["problems"][0]
    health = (await unconfigured.client.get(f"{TASKS}/vpsweb/health")).json()
    assert health["status"] == "not_configured"


async def test_the_documents_routes_are_in_openapi(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    table = [
        ("post", TRANSLATION),
        ("get", f"{TRANSLATION}/{{job_id}}"),
        ("get", f"{TRANSLATION}/{{job_id}}/result"),
        ("post", f"{TRANSLATION}/{{job_id}}/retry"),
        ("delete", f"{TRANSLATION}/{{job_id}}"),
        ("post", f"{TRANSLATION}/batch"),
        ("post", f"{TRANSLATION}/compare"),
        ("get", f"{TASKS}/health"),
        ("get", f"{TASKS}/vpsweb/status"),
        ("get", f"{TASKS}/vpsweb/health"),
    ]
    for method, path in table:
        assert method in spec["paths"].get(path, {}), (method, path)


# --- the stream VPSWeb's UI listens to --------------------------------------------------------


@dataclass
class Stepped:
    client: httpx.AsyncClient
    manager: TaskManager
    stepper: Stepper


@pytest.fixture
async def stepped(settings_factory: Callable[..., Settings]) -> AsyncIterator[Stepped]:
    """The API with an injected workflow whose steps the test releases (no provider)."""
    settings = settings_factory(translation={"heartbeat_seconds": 0.2, "max_retries": 0})
    manager = TaskManager(
        settings, breakers=BreakerRegistry(BreakerConfig()), extensions=[TranslationExtension()]
    )
    stepper = Stepper()
    VPSWebAdapter(manager, workflow_factory=stepper)
    app = create_app(settings, manager=manager)
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        yield Stepped(client, manager, stepper)


def data(event: dict[str, str]) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(event["data"])
    return parsed


async def test_a_late_vpsweb_stream_replays_the_job_so_far_then_follows_it(
    stepped: Stepped,
) -> None:
    gates = stepped.stepper.job(0)
    job_id = (await stepped.client.post(TRANSLATION, json=DOCUMENT_REQUEST)).json()["job_id"]
    await gates.step(0)
    gates.release[0].set()
    await gates.step(1)  # step 1 is done, step 2 runs: the client connects only now
    async with stepped.client.stream("GET", f"{TRANSLATION}/{job_id}/events") as response:
        lines = response.aiter_lines()
        replay = await read_events(lines, lambda e: e["event"] == "step_change")
        gates.release[1].set()
        gates.release[2].set()
        rest = await read_events(lines, lambda e: e["event"] == "completed")
    assert all(data(e)["task_id"] == job_id for e in replay + rest)
    assert [(e["event"], data(e).get("step"), data(e).get("progress")) for e in replay] == [
        ("connected", None, 33),
        ("step_start", 1, 0),
        ("step_complete", 1, 33),
        ("step_start", 2, 33),
        ("status", None, 33),
        ("step_change", None, 33),
    ]
    status = data(replay[-2])
    assert (status["status"], status["current_step"], status["total_steps"]) == (
        "running",
        "Editor Review",
        3,
    )
    assert status["step_states"] == {
        "Initial Translation": "completed",
        "Editor Review": "running",
        "Translator Revision": "waiting",
    }
    steps = [
        (e["event"], data(e)["step"]) for e in rest if e["event"] in ("step_start", "step_complete")
    ]
    assert steps == [("step_complete", 2), ("step_start", 3), ("step_complete", 3)]
    assert set(e["event"] for e in rest) <= {
        "status",
        "step_change",
        "step_start",
        "step_complete",
        "heartbeat",
        "completed",
    }
    final = [data(e) for e in rest if e["event"] == "status"][-1]
    assert (final["status"], final["progress"]) == ("completed", 100)
    assert data(rest[-1])["progress"] == 100


async def test_an_idle_vpsweb_stream_sends_heartbeats_and_a_failure_ends_it(
    stepped: Stepped,
) -> None:
    gates = stepped.stepper.job(0)
    gates.fail_at = 0
    job_id = (await stepped.client.post(TRANSLATION, json=DOCUMENT_REQUEST)).json()["job_id"]
    await gates.step(0)
    comments: list[str] = []

    async def lines_of(response: httpx.Response) -> AsyncIterator[str]:
        async for line in response.aiter_lines():
            if line.startswith(":"):
                comments.append(line)
            yield line

    async with stepped.client.stream("GET", f"{TRANSLATION}/{job_id}/events") as response:
        lines = lines_of(response)
        await read_events(lines, lambda e: e["event"] == "heartbeat")
        assert comments == [": heartbeat"]  # proxies see traffic before the event
        gates.release[0].set()
        ended = await read_events(lines, lambda e: e["event"] == "error")
        assert [line async for line in lines] == []  # and the stream ends
    failed, error = ended[-2:]
    assert failed["event"] == "failed"
    assert data(failed) == data(error)
    assert (data(failed)["status"], data(failed)["job_status"]) == ("failed", "failed")
    assert "Initial Translation failed" in data(failed)["error_message"]
    states = [data(e)["step_states"] for e in ended if e["event"] == "status"]
    assert states[-1]["Initial Translation"] == "failed"


async def test_deleting_a_running_job_answers_cancelled_or_that_a_cancel_was_requested(
    stepped: Stepped, settings_factory: Callable[..., Settings]
) -> None:
    # Run by the server's own workers: stopped before the answer, which says cancelled.
    gates = stepped.stepper.job(0)
    job_id = (await stepped.client.post(TRANSLATION, json=DOCUMENT_REQUEST)).json()["job_id"]
    await gates.step(0)
    answer = await stepped.client.delete(f"{TRANSLATION}/{job_id}")
    assert answer.status_code == 200, answer.text
    assert (answer.json()["status"], answer.json()["cancel_requested"]) == ("cancelled", False)
    assert (await stepped.client.get(f"{TRANSLATION}/{job_id}")).json()["status"] == "cancelled"


async def test_deleting_a_job_another_worker_runs_answers_that_a_cancel_was_requested(
    settings_factory: Callable[..., Settings],
) -> None:
    # An API-only server, and a worker (a manager of its own on the same database) that
    # runs the job: the answer says a cancel was requested; the worker hears of it and
    # stops the job.
    def manager(enabled: bool) -> tuple[TaskManager, Stepper]:
        made = TaskManager(
            settings_factory(background_tasks={"enabled": enabled}),
            breakers=BreakerRegistry(BreakerConfig()),
            extensions=[TranslationExtension()],
        )
        stepper = Stepper()
        VPSWebAdapter(made, workflow_factory=stepper)
        return made, stepper

    server, _ = manager(enabled=False)
    worker, stepper = manager(enabled=True)
    app = create_app(server.settings, manager=server)
    async with (
        worker,
        serve(app) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=10) as client,
    ):
        job_id = (await client.post(TRANSLATION, json=DOCUMENT_REQUEST)).json()["job_id"]
        await stepper.job(0).step(0)
        answer = await client.delete(f"{TRANSLATION}/{job_id}")
        assert answer.status_code == 200, answer.text
        assert (answer.json()["status"], answer.json()["cancel_requested"]) == ("running", True)
        assert (await worker.wait(job_id, timeout=10)).status is TaskStatus.CANCELLED
        final = (await client.get(f"{TRANSLATION}/{job_id}")).json()
    assert (final["status"], final["cancel_requested"]) == ("cancelled", False)


async def test_idempotency_keys_of_submits_and_batches(api: Api) -> None:
    """A client that retries a translation submit (or a batch) pays for one job: the
    repeat answers 200 with the first job's id; the key with another text is a 422."""
    key = {"Idempotency-Key": "poem-42"}
    first = await api.client.post(TRANSLATION, json=DOCUMENT_REQUEST, headers=key)
    again = await api.client.post(TRANSLATION, json=DOCUMENT_REQUEST, headers=key)
    assert (first.status_code, again.status_code) == (202, 200), again.text
    assert again.json()["job_id"] == first.json()["job_id"]
    other = {**DOCUMENT_REQUEST, "original_text": "Another poem entirely."}
    refused = await api.client.post(TRANSLATION, json=other, headers=key)
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]

    batch = {"requests": [DOCUMENT_REQUEST, other]}
    batch_key = {"Idempotency-Key": "batch-7"}
    one = await api.client.post(f"{TRANSLATION}/batch", json=batch, headers=batch_key)
    two = await api.client.post(f"{TRANSLATION}/batch", json=batch, headers=batch_key)
    assert (one.status_code, two.status_code) == (202, 200)
    assert two.json()["job_ids"] == one.json()["job_ids"]
    for job_id in [first.json()["job_id"], *one.json()["job_ids"]]:
        await api.manager.wait(job_id, timeout=10)
    assert len(api.llm.calls) == 3 * 3  # three jobs of three steps: no job ran twice
