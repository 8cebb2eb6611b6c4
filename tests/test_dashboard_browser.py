"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright's Python package) against a real uvicorn server.

Tasks here are driven step by step by the test (a memory stream per task), so what the
page must show at each moment is known; the page is awaited with Playwright's auto-waiting
``expect``, never with sleeps. ``test_screenshot_under_load`` saves
``test-artifacts/dashboard.png``.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from playwright.async_api import Browser, ConsoleMessage, Page, Route, async_playwright, expect

from vpsweb_tasks import TaskContext, TaskManager, TaskMonitor, TaskStatus
from vpsweb_tasks.breakers import BreakerConfig, BreakerRegistry
from vpsweb_tasks.config import Settings
from vpsweb_tasks.translation import STEP_NAMES, TranslationExtension
from vpsweb_tasks_http import create_app

from .http_server import serve
from .llm_server import Reply, fake_llm

pytestmark = pytest.mark.anyio

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TASKS = "/api/v1/background-tasks"
TRANSLATION = f"{TASKS}/translation"
MONITORING = "/api/v1/monitoring"
TIMEOUT_MS = 5000

expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    # Module scope, so that one browser serves every test of the module.
    return "asyncio"


@pytest.fixture(scope="module")
async def browser(anyio_backend: str) -> AsyncIterator[Browser]:
    if not await anyio.Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield browser
        await browser.close()


StreamPair = tuple[MemoryObjectSendStream[float], MemoryObjectReceiveStream[float]]


@dataclass
class Steps:
    """Progress of "stepped" tasks, fed by the test: each value sent becomes one
    update_progress; closing the stream ends the task."""

    streams: dict[str, tuple[MemoryObjectSendStream[float], MemoryObjectReceiveStream[float]]] = (
        field(default_factory=dict)
    )

    def pair(
        self, name: str
    ) -> tuple[MemoryObjectSendStream[float], MemoryObjectReceiveStream[float]]:
        if name not in self.streams:
            self.streams[name] = anyio.create_memory_object_stream[float](10)
        return self.streams[name]

    async def send(self, name: str, progress: float) -> None:
        await self.pair(name)[0].send(progress)

    async def finish(self, name: str) -> None:
        await self.pair(name)[0].aclose()


@dataclass
class Board:
    url: str
    page: Page
    client: httpx.AsyncClient
    manager: TaskManager
    monitor: TaskMonitor
    steps: Steps
    fixed: anyio.Event
    errors: list[str]

    async def submit(self, task_type: str, name: str = "t", **body: Any) -> str:
        response = await self.client.post(
            f"{TASKS}/submit", json={"task_name": name, "task_type": task_type, **body}
        )
        assert response.status_code == 202, response.text
        return str(response.json()["task_id"])

    async def open(self) -> None:
        await self.page.goto(f"{self.url}/dashboard/")
        await self.ready()

    async def ready(self) -> None:
        """Loaded, following the event stream, and drawn at least once."""
        await expect(self.page.locator("body")).to_have_attribute("data-live", "open")
        await expect(self.page.locator("body")).to_have_attribute("data-ready", "true")

    def task(self, panel: str, task_id: str) -> Any:
        return self.page.locator(f'{panel} [data-task-id="{task_id}"]')


def register(steps: Steps, fixed: anyio.Event) -> Callable[[TaskManager], None]:
    def setup(manager: TaskManager) -> None:
        @manager.task("stepped")
        async def stepped(context: TaskContext) -> dict[str, int]:
            _, receive = steps.pair(context.payload["steps"])
            count = 0
            async for progress in receive:
                count += 1
                await context.update_progress(progress, f"step {count}: {progress:.0%}")
            return {"steps": count}

        @manager.task("bad_input")
        async def bad_input(context: TaskContext) -> None:
            raise ValueError("the poem is empty")

        @manager.task("provider_down")
        async def provider_down(context: TaskContext) -> None:
            raise ConnectionError("provider unreachable")

        @manager.task("needs_fix")
        async def needs_fix(context: TaskContext) -> str:
            if not fixed.is_set():
                raise PermissionError("no access to the bucket")
            return "fixed"

    return setup


def console_errors(page: Page) -> list[str]:
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(f"{message.text} at {message.location}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    return errors


@asynccontextmanager
async def board_for(
    browser: Browser,
    settings: Settings,
) -> AsyncIterator[Board]:
    steps = Steps()
    fixed = anyio.Event()
    # A registry of its own: breakers opened here must not leak into other tests.
    manager = TaskManager(settings, breakers=BreakerRegistry(), extensions=[TranslationExtension()])
    app = create_app(settings, manager=manager, setup=register(steps, fixed))
    async with (
        serve(app) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=10) as client,
    ):
        context = await browser.new_context(viewport={"width": 1400, "height": 1000})
        page = await context.new_page()
        errors = console_errors(page)
        try:
            yield Board(
                base_url, page, client, app.state.manager, app.state.monitor, steps, fixed, errors
            )
        finally:
            for send, _ in steps.streams.values():
                send.close()
            # Close the page's event stream before the server stops waiting for it.
            await context.close()


@pytest.fixture
async def board(
    browser: Browser, settings_factory: Callable[..., Settings]
) -> AsyncIterator[Board]:
    settings = settings_factory(background_tasks={"max_concurrent_jobs": 3})
    async with board_for(browser, settings) as board:
        yield board
        assert board.errors == []


async def test_the_page_loads_with_every_panel_and_no_console_errors(board: Board) -> None:
    await board.open()
    page = board.page
    # (The status depends on this machine's load: any of the three is right.)
    await expect(page.locator("#health-status")).to_have_text(
        re.compile(r"^(healthy|degraded|unhealthy)$")
    )
    await expect(page.locator("#queue-state")).to_have_text("Processing")
    await expect(page.locator("#live")).to_have_text("live")
    await expect(page.locator("#charts svg")).to_have_count(3)
    await expect(page.locator("#running .empty")).to_be_visible()
    await expect(page.locator("#alerts li").first).to_be_visible()  # or "No alerts."
    await expect(page.locator("#translations .empty")).to_have_text("No translation jobs.")
    await expect(page.locator("#detail")).to_be_hidden()
    assert board.errors == []


async def test_a_submitted_task_appears_and_its_bar_advances_to_done_without_reload(
    board: Board,
) -> None:
    await board.open()
    page = board.page
    await page.evaluate("window.notReloaded = true")
    task_id = await board.submit("stepped", name="Import poems", payload={"steps": "a"})
    running = board.task("#running", task_id)
    await expect(running).to_be_visible()
    await expect(running.locator(".name")).to_have_text("Import poems")
    await running.click()  # opens the detail view, which follows the task too
    detail = page.locator("#detail")
    await expect(detail).to_be_visible()
    await expect(detail.locator("#detail-title")).to_have_text("Import poems")
    expected = ["25", "50", "75"]
    for step, percent in enumerate(expected, start=1):
        await board.steps.send("a", int(percent) / 100)
        await expect(running.locator(".bar")).to_have_attribute("aria-valuenow", percent)
        await expect(running.locator(".message")).to_have_text(f"step {step}: {percent}%")
        await expect(detail.locator(".bar")).to_have_attribute("aria-valuenow", percent)
    await expect(detail.locator(".history li")).to_have_count(3)
    await board.steps.finish("a")
    await expect(detail.locator(".bar")).to_have_attribute("aria-valuenow", "100")
    await expect(detail.locator(".bar")).to_have_attribute("data-status", "completed")
    await expect(detail.locator("dd[data-field=status]")).to_have_text("completed")
    await expect(detail.locator("pre")).to_contain_text('"steps": 3')
    finished = board.task("#recent", task_id)
    await expect(finished).to_have_attribute("data-status", "completed")
    await expect(finished.locator(".duration")).not_to_have_text("\u2013")  # a dash: unknown
    await expect(running).to_have_count(0)
    assert await page.evaluate("window.notReloaded") is True
    record = await board.manager.get_task(task_id)
    assert (record.status, record.progress) == (TaskStatus.COMPLETED, 1.0)


async def test_pause_resume_and_clear_buttons_act_on_the_queue(board: Board) -> None:
    await board.open()
    page = board.page
    await page.locator("#pause").click()
    await expect(page.locator("#queue-state")).to_have_attribute("data-paused", "true")
    await expect(page.locator("#queue-state")).to_have_text("Paused: paused from the dashboard")
    status = await board.manager.queue_status()
    assert (status.paused, status.pause_reason) == (True, "paused from the dashboard")
    waiting = [await board.submit("stepped", payload={"steps": f"w{i}"}) for i in range(3)]
    for task_id in waiting:
        await expect(board.task("#queued", task_id)).to_be_visible()
    await expect(page.locator("#queue-stats")).to_contain_text("3/100")

    page.once("dialog", lambda dialog: dialog.accept())
    await page.locator("#clear").click()
    for task_id in waiting:
        await expect(board.task("#recent", task_id)).to_have_attribute("data-status", "cancelled")
    assert [(await board.manager.get_task(t)).status for t in waiting] == [TaskStatus.CANCELLED] * 3

    await page.locator("#resume").click()
    await expect(page.locator("#queue-state")).to_have_attribute("data-paused", "false")
    assert not (await board.manager.queue_status()).paused
    task_id = await board.submit("stepped", payload={"steps": "after"})
    await expect(board.task("#running", task_id)).to_be_visible()


async def test_a_failed_task_shows_its_error_category_and_requeue_acts(board: Board) -> None:
    await board.open()
    page = board.page
    bad = await board.submit("bad_input", name="Empty poem")
    row = board.task("#recent", bad)
    await expect(row).to_have_attribute("data-status", "failed")
    await expect(row.locator(".category")).to_have_text("validation")
    await expect(board.task("#dead-letters", bad).locator(".category")).to_have_text("validation")

    locked = await board.submit("needs_fix", name="Upload")
    letter = board.task("#dead-letters", locked)
    await expect(letter.locator(".category")).to_have_text("permission")
    await letter.focus()  # rows open by keyboard too
    await page.keyboard.press("Enter")  # every attempt's error in the detail view
    attempts = page.locator("#detail table.attempts tbody tr")
    await expect(attempts).to_have_count(1)
    await expect(attempts.first).to_contain_text("PermissionError: no access to the bucket")

    board.fixed.set()
    await letter.locator("button.requeue").click()
    await expect(letter).to_have_count(0)
    await expect(board.task("#recent", locked)).to_have_attribute("data-status", "completed")
    await expect(attempts).to_have_count(2)  # the open detail view follows the task
    record = await board.manager.get_task(locked)
    assert (record.status, record.result) == (TaskStatus.COMPLETED, "fixed")
    outcomes = [e.outcome.value for e in await board.manager.list_executions(locked)]
    assert outcomes == ["failed", "completed"]


async def test_the_api_key_is_asked_once_and_sent(
    browser: Browser,
    settings_factory: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DASHBOARD_KEY", "open-sesame")
    settings = settings_factory(http={"api_key_env": "DASHBOARD_KEY"})
    async with board_for(browser, settings) as board:
        board.client.headers["X-API-Key"] = "open-sesame"
        page = board.page
        await page.goto(f"{board.url}/dashboard/")
        dialog = page.locator("#key-dialog")
        await expect(dialog).to_be_visible()
        await expect(page.locator("#key-error")).to_be_hidden()
        await page.locator("#api-key-input").fill("wrong")
        await page.locator("#key-dialog button").click()
        await expect(page.locator("#key-error")).to_be_visible()  # refused: asked again
        await page.locator("#api-key-input").fill("open-sesame")
        await page.locator("#key-dialog button").click()
        await board.ready()  # the event stream is open: through a stream token
        await expect(dialog).to_be_hidden()
        task_id = await board.submit("bad_input")
        await expect(board.task("#recent", task_id)).to_have_attribute("data-status", "failed")
        assert await page.evaluate("sessionStorage.length") == 1

        await page.reload()  # same tab: the key is kept, not asked again
        await board.ready()
        await expect(dialog).to_be_hidden()
        await expect(board.task("#recent", task_id)).to_be_visible()
        # The refused key's 401s are the only errors the console saw.
        assert board.errors, "the wrong key was not refused"
        assert all("status of 401" in error for error in board.errors), board.errors


# --- translation jobs ----------------------------------------------------------------------
# Besides a real job (below), some states are easier to give in the browser (page.route),
# in the shapes of TranslationJob and TranslationResult: a job still running next to a
# finished one, and a server answering 404.

STEP_OUTPUTS = [
    ("initial_translation", "Initial Translation", "Bo nie mogłam przystanąć dla Śmierci -"),
    ("editor_review", "Editor Review", "Line 1: 'przystanąć' loses the courtesy of 'stop'."),
    ("translator_revision", "Translator Revision", "Że ja nie mogłam stanąć dla Śmierci -"),
]
JOB = {
    "source_language": "English",
    "target_language": "Polish",
    "workflow_mode": "hybrid",
    "metadata": {"title": "Because I could not stop for Death", "author": "Emily Dickinson"},
    "attempts": 1,
    "error_message": None,
    "error_category": None,
    "created_at": "2026-11-29T12:00:00Z",
    "updated_at": "2026-11-29T12:00:13Z",
    "started_at": "2026-11-29T12:00:00Z",
}
JOBS = [
    {
        **JOB,
        "job_id": "job-running",
        "task_id": "job-running",
        "status": "running",
        "progress": 0.5,
        "message": "Editor Review",
        "current_step": "editor_review",
        "steps_completed": ["initial_translation"],
        "steps": [],  # filled in below from RESULT's first step
        "metadata": {"title": "Hope is the thing with feathers"},
        "finished_at": None,
        "result_available": False,
    },
    {
        **JOB,
        "job_id": "job-done",
        "task_id": "job-done",
        "status": "completed",
        "progress": 1.0,
        "message": "done",
        "current_step": None,
        "steps_completed": [key for key, _, _ in STEP_OUTPUTS],
        "finished_at": "2026-11-29T12:00:13Z",
        "result_available": True,
    },
]
RESULT = {
    **{k: JOB[k] for k in ("source_language", "target_language", "workflow_mode", "metadata")},
    "job_id": "job-done",
    "status": "completed",
    "original_text": "Because I could not stop for Death -",
    "final_translation": STEP_OUTPUTS[-1][2],
    "steps": [
        {
            "step": key,
            "name": name,
            "output": output,
            "notes": None,
            "model": "qwen2.5:7b",
            "tokens": {"prompt_tokens": 200, "completion_tokens": 100, "total_tokens": 300},
            "duration_seconds": 4.2,
            "finished_at": 1_800_000_000.0,
            "attempt": 1,
        }
        for key, name, output in STEP_OUTPUTS
    ],
    "models_used": {key: "qwen2.5:7b" for key, _, _ in STEP_OUTPUTS},
    "token_usage": {"prompt_tokens": 600, "completion_tokens": 300, "total_tokens": 900},
    "duration_seconds": 12.6,
    "workflow_output": None,
}
JOBS[0]["steps"] = RESULT["steps"][:1]  # the running job has finished step 1
JOBS[1]["steps"] = RESULT["steps"]
#: ``GET .../translation/usage`` in the route's shape.
USAGE = {
    "window_seconds": 3600,
    "currency": "EUR",
    "prompt_tokens": 900,
    "completion_tokens": 300,
    "cost": 0.0125,
    "by_model": [],
}

TRANSLATION_URL = re.compile(r"/api/v1/background-tasks/translation(/[^?]*)?(\?.*)?$")


async def answer_translations(page: Page, status: int = 200) -> list[str]:
    """Answers the page's translation calls with JOBS and RESULT (or ``status``)."""
    asked: list[str] = []

    async def handle(route: Route) -> None:
        url = route.request.url
        asked.append(url.split("/translation", 1)[1])
        if status != 200:
            await route.fulfill(status=status, json={"detail": "Not Found"})
        elif url.split("?")[0].endswith("/translation"):
            await route.fulfill(json={"jobs": JOBS, "count": 2, "limit": 5, "offset": 0})
        elif url.split("?")[0].endswith("/translation/usage"):
            await route.fulfill(json=USAGE)
        elif url.endswith("/job-done/result"):
            await route.fulfill(json=RESULT)
        else:
            await route.fulfill(status=404, json={"detail": "no such job"})

    await page.route(TRANSLATION_URL, handle)
    return asked


async def test_translation_jobs_show_each_steps_output_side_by_side(
    browser: Browser, settings_factory: Callable[..., Settings]
) -> None:
    # A real translation job, its three steps answered by a loopback LLM server.
    outputs = [
        "Bo nie mogłam przystanąć dla Śmierci",
        "Consider a gentler verb for 'stop'.",
        "Że ja nie mogłam stanąć dla Śmierci",
    ]
    async with fake_llm() as llm:
        llm.reply(
            Reply(content=f"<translation>{outputs[0]}</translation><notes>first</notes>"),
            Reply(content=outputs[1]),
            Reply(content=f"<translation>{outputs[2]}</translation><notes>revised</notes>"),
        )
        provider = {
            "base_url": llm.base_url,
            "models": {"default": "m-initial"},
            # Each call: 10 prompt and 5 completion tokens (the loopback server's usage).
            "prices": {"m-initial": {"prompt": 1000, "completion": 2000}},
        }
        settings = settings_factory(providers={"local": provider})
        async with board_for(browser, settings) as board:
            await board.open()
            response = await board.client.post(
                TRANSLATION,
                json={
                    "original_text": "Because I could not stop for Death",
                    "source_language": "en",
                    "target_language": "pl",
                    "workflow_mode": "hybrid",
                    "metadata": {"author": "Emily Dickinson", "title": "Dickinson 479"},
                },
            )
            assert response.status_code == 202, response.text
            job_id = response.json()["job_id"]
            job = board.page.locator(f'#translations [data-job-id="{job_id}"]')
            await expect(job).to_have_attribute("data-status", "completed")  # live, no reload
            await expect(job.locator(".step h4")).to_have_text(["Original", *STEP_NAMES.values()])
            await expect(job.locator(".step p")).to_have_text(
                ["Because I could not stop for Death", *outputs]
            )
            await expect(job).to_contain_text("Dickinson 479 by Emily Dickinson")
            await expect(job).to_contain_text("English → Polish · hybrid")
            await expect(job.locator(".spend")).to_have_text("45 tokens · 0.0600")
            await expect(job.locator(".step").nth(1)).to_contain_text("15 tokens · 0.0200")
            await expect(board.page.locator("#translations .usage")).to_have_text(
                "Last 1 h: 45 tokens · 0.0600 USD"
            )
            assert len(llm.calls) == 3  # the page only reads
            assert board.errors == []
            ARTIFACTS.mkdir(exist_ok=True)
            await board.page.locator("#translations").screenshot(
                path=str(ARTIFACTS / "dashboard-translation.png")
            )


async def test_translation_panel_draws_running_and_finished_jobs_from_the_routes_shapes(
    browser: Browser, settings_factory: Callable[..., Settings]
) -> None:
    # Both states at once, answered in the browser in the routes' shapes: a running job has
    # a bar and its finished steps, and no result is asked for it; a finished one shows the
    # original and every step.
    async with board_for(browser, settings_factory()) as board:
        asked = await answer_translations(board.page)
        await board.open()
        done = board.page.locator('#translations [data-job-id="job-done"]')
        await expect(done.locator(".step h4")).to_have_text(
            ["Original", "Initial Translation", "Editor Review", "Translator Revision"]
        )
        await expect(done.locator(".step p")).to_have_text(
            [RESULT["original_text"], *(output for _, _, output in STEP_OUTPUTS)]
        )
        await expect(done.locator(".step").nth(1)).to_contain_text("qwen2.5:7b · 300 tokens")
        await expect(done).to_contain_text("English → Polish · hybrid")
        await expect(board.page.locator("#translations .usage")).to_have_text(
            "Last 1 h: 1200 tokens · 0.0125 EUR"
        )
        running = board.page.locator('#translations [data-job-id="job-running"]')
        await expect(running.locator(".bar")).to_have_attribute("aria-valuenow", "50")
        # No result yet (not asked for): the step it finished, from the job's checkpoints.
        await expect(running.locator(".step h4")).to_have_text(["Initial Translation"])
        await expect(running.locator(".step p")).to_have_text([STEP_OUTPUTS[0][2]])
        assert "/job-running/result" not in asked
        assert board.errors == []


async def test_translation_routes_answering_404_show_not_available(
    browser: Browser, settings_factory: Callable[..., Settings]
) -> None:
    async with board_for(browser, settings_factory()) as board:
        asked = await answer_translations(board.page, status=404)
        await board.open()
        panel = board.page.locator("#translations")
        await expect(panel).to_have_attribute("data-available", "false")
        await expect(panel.locator(".empty")).to_have_text(
            "Translation jobs: not available on this server."
        )
        await expect(board.page.locator("#translations .error")).to_be_hidden()
        assert asked
        assert all("status of 404" in error for error in board.errors), board.errors


async def test_screenshot_under_load(board: Board) -> None:
    """Several running, queued, retrying and failed tasks, an open breaker and a resource
    history; saved to test-artifacts/dashboard.png."""
    manager = board.manager
    for _ in range(12):  # a resource history for the charts
        await board.monitor.sample()
    breaker = manager.breakers.get("llm_provider", BreakerConfig(failure_threshold=2))
    for _ in range(2):
        with pytest.raises(ConnectionError):
            async with breaker.guard():
                raise ConnectionError("provider unreachable")
    async with manager.breakers.get("storage").guard():
        pass
    await board.open()

    done = await board.submit("stepped", name="Nightly export", payload={"steps": "done"})
    await board.steps.send("done", 1.0)
    await board.steps.finish("done")
    await expect(board.task("#recent", done)).to_be_visible()
    for name in ("Empty poem", "Blank stanza"):
        await board.submit("bad_input", name=name)
    await board.submit("needs_fix", name="Upload to archive")
    flaky = await board.submit("provider_down", name="Call LLM provider", max_retries=0)
    await expect(board.task("#dead-letters", flaky)).to_be_visible()
    running = {
        "Translate batch 7": [0.1, 0.25, 0.42],
        "Rebuild index": [0.5, 0.78],
        "Import anthology": [0.15],
    }
    for name, steps in running.items():
        task_id = await board.submit("stepped", name=name, payload={"steps": name})
        for progress in steps:
            await board.steps.send(name, progress)
        await expect(board.task("#running", task_id).locator(".bar")).to_have_attribute(
            "aria-valuenow", str(math.floor(steps[-1] * 100 + 0.5))
        )
    # The detail view of the first one: its progress history and attempts.
    await board.page.locator("#running li", has_text="Translate batch 7").click()
    await expect(board.page.locator("#detail .history li")).to_have_count(3)
    for name, priority in [("Backfill metrics", "low"), ("Urgent fix", "critical")]:
        task_id = await board.submit(
            "stepped", name=name, priority=priority, payload={"steps": name}
        )
        await expect(board.task("#queued", task_id)).to_be_visible()
    await expect(board.page.locator("#breakers [data-breaker=llm_provider] .badge")).to_have_text(
        "open"
    )
    await expect(board.page.locator("#dead-letters tbody tr")).to_have_count(4)
    ARTIFACTS.mkdir(exist_ok=True)
    await board.page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


async def test_a_failing_route_shows_its_error_in_its_panel_only(board: Board) -> None:
    async def broken(route: Route) -> None:
        await route.fulfill(status=500, json={"detail": "storage is on fire"})

    await board.page.route(re.compile(r"/api/v1/background-tasks/dead-letters\?"), broken)
    await board.open()
    await expect(board.page.locator("#dead-letters .error")).to_have_text("storage is on fire")
    await expect(board.page.locator("#queue .error")).to_be_hidden()
    task_id = await board.submit("bad_input")
    await expect(board.task("#recent", task_id)).to_have_attribute("data-status", "failed")
    assert board.errors
    assert all("status of 500" in error for error in board.errors)
    board.errors.clear()


async def test_schedules_show_their_next_run_and_pause_and_resume(board: Board) -> None:
    await board.manager.add_schedule(
        "nightly", task_type="stepped", cron="0 3 * * *", timezone="Europe/Warsaw"
    )
    await board.manager.add_schedule("often", task_type="bad_input", every=3600)
    await board.open()
    page = board.page
    rows = page.locator("#schedules tbody tr")
    await expect(rows).to_have_count(3)  # and the built-in cleanup
    await expect(page.locator("#schedules .count")).to_have_text("(3)")
    nightly = page.locator('#schedules [data-schedule="nightly"]')
    await expect(nightly).to_contain_text("stepped")
    await expect(nightly.locator(".when")).to_have_text("cron 0 3 * * *")
    await expect(nightly.locator(".timezone")).to_have_text("Europe/Warsaw")
    await expect(nightly.locator(".state")).to_have_text("enabled")
    await expect(nightly.locator(".next-run")).to_have_text(re.compile(r"^in \d+ (h|min|s)"))
    await expect(nightly.locator(".last-tick")).to_have_text("\u2013")  # a dash: never
    often = page.locator('#schedules [data-schedule="often"]')
    await expect(often.locator(".when")).to_have_text("every 1 h 0 min")

    await nightly.locator("button.pause-schedule").click()
    await expect(nightly).to_have_attribute("data-enabled", "false")
    await expect(nightly.locator(".state")).to_have_text("paused")
    await expect(nightly.locator(".next-run")).to_have_text("paused")
    assert (await board.manager.get_schedule("nightly")).enabled is False
    await nightly.locator("button.resume-schedule").click()
    await expect(nightly).to_have_attribute("data-enabled", "true")
    await expect(nightly.locator(".next-run")).to_have_text(re.compile(r"^in "))
    assert (await board.manager.get_schedule("nightly")).enabled is True


async def test_a_schedules_tick_shows_as_its_last_tick(board: Board) -> None:
    await board.open()
    page = board.page
    await board.manager.add_schedule("quick", task_type="bad_input", every=0.2)
    quick = page.locator('#schedules [data-schedule="quick"]')
    await expect(quick).to_be_visible()  # drawn on the tick's task_submitted event
    await expect(quick.locator(".last-tick")).to_have_text(re.compile(r"ago$|^now$"))
    await board.manager.pause_schedule("quick")
