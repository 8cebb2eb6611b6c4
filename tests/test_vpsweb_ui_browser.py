"""VPSWeb's web UI following a translation job through a real browser EventSource
(Debian's /usr/bin/chromium, driven by Playwright) against a real uvicorn server.

The page below re-expresses, in a few lines, how VPSWeb's UI handles the job stream; it
is written from reading VPSWeb's source (github.com/OCboy5/vpsweb), not copied:

* src/vpsweb/webui/web/templates/poem_detail.html @016a974, ``startWorkflowPolling()``:
  ``new EventSource(...)`` and its listeners ``connected``, ``status`` (``progress`` as a
  percentage, ``current_step`` and the keys of ``step_states`` being step names,
  ``step_states`` values ``waiting`` / ``running`` / ``completed``), ``step_change`` (the
  same fields), ``step_start`` / ``step_complete`` (``step`` a number 1..3; the page
  computes the bar itself, ``updateProgressFromStep``: (step - 1) * 33 on start, step * 33
  on completion), ``completed`` (``handleWorkflowCompletion``: 100 %, every step done,
  close), ``failed`` (``handleWorkflowFailure(task.error_message)``, close),
  ``heartbeat`` (logged), and ``error``, which it takes for a broken connection (close and
  reconnect) unless the workflow has finished;
* src/vpsweb/webui/main.py, ``create_translation_events_from_app_state``, and
  src/vpsweb/webui/sse_real.py, ``create_real_translation_events``: what its server sends,
  ``task_id`` in every event, ``progress`` an integer 0..100
  (``int(step / total_steps * 100)``);
* src/vpsweb/webui/task_models.py, ``TaskStatus``: ``progress: int`` "0-100",
  ``current_step`` a step name, ``step_states`` by step name.

The page also checks every event against those shapes and records what breaks them. The
jobs run an injected workflow whose steps the test releases, so each moment is known;
the page is awaited with Playwright's auto-waiting ``expect``, never with sleeps.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
import pytest
from playwright.async_api import Browser, Page, Route, expect

from vpsweb_tasks import BreakerConfig, BreakerRegistry, TaskManager
from vpsweb_tasks.config import Settings
from vpsweb_tasks.translation import TranslationExtension, VPSWebAdapter
from vpsweb_tasks_http import create_app

from .http_server import serve
from .stepped_workflow import Stepper
from .test_dashboard_browser import anyio_backend, browser, console_errors
from .test_translation import DOCUMENT_REQUEST

__all__ = ["anyio_backend", "browser"]  # the module-scoped fixtures, shared

pytestmark = pytest.mark.anyio

TRANSLATION = "/api/v1/background-tasks/translation"
NAMES = ["Initial Translation", "Editor Review", "Translator Revision"]

PAGE = """<!doctype html>
<html><body data-outcome="" data-heartbeats="0">
<p id="progress">0%</p>
<ol>%STEPS%</ol>
<p id="message"></p>
<pre id="violations"></pre>
<script>
const jobId = new URLSearchParams(location.search).get("job");
const names = %NAMES%;
const body = document.body;
const violations = [];
let finished = false;

function check(kind, data) {
  const wrong = (what) => violations.push(`${kind}: ${what} ${JSON.stringify(data)}`);
  if (data.task_id !== jobId) wrong("task_id");
  if ("progress" in data && !(Number.isInteger(data.progress) && data.progress >= 0
      && data.progress <= 100)) wrong("progress");
  if ("step" in data && !(Number.isInteger(data.step) && data.step >= 1 && data.step <= 3))
    wrong("step");
  if (data.current_step && !names.includes(data.current_step)) wrong("current_step");
  for (const [name, state] of Object.entries(data.step_states || {}))
    if (!names.includes(name) || !["waiting", "running", "completed", "failed"].includes(state))
      wrong("step_states");
  document.getElementById("violations").textContent = violations.join("\\n");
}

function on(source, kind, handle) {
  source.addEventListener(kind, (event) => {
    if (kind === "error" && !event.data) {  // the connection, not an event of the server
      if (!finished) body.dataset.connectionErrors = "yes";
      return;
    }
    const data = JSON.parse(event.data);
    check(kind, data);
    body.dataset.events = `${body.dataset.events || ""} ${kind}`.trim();
    handle(data);
  });
}

const bar = (percent) => { document.getElementById("progress").textContent = `${percent}%`; };
const step = (name, state) => {
  const item = document.querySelector(`[data-step="${name}"]`);
  if (item) item.dataset.state = state;
};
const states = (data) => {
  for (const [name, state] of Object.entries(data.step_states || {})) step(name, state);
};

const source = new EventSource(`/api/v1/background-tasks/translation/${jobId}/events`);
on(source, "connected", () => { body.dataset.connected = "yes"; });
on(source, "status", (data) => { bar(data.progress || 0); states(data); });
on(source, "step_change", (data) => { states(data); });
on(source, "step_start", (data) => {
  bar((data.step - 1) * 33);
  step(names[data.step - 1], "running");
});
on(source, "step_complete", (data) => {
  bar(data.step * 33);
  step(names[data.step - 1], "completed");
});
on(source, "heartbeat", () => { body.dataset.heartbeats = Number(body.dataset.heartbeats) + 1; });
on(source, "completed", () => {
  finished = true;
  source.close();
  bar(100);
  names.forEach((name) => step(name, "completed"));
  body.dataset.outcome = "completed";
});
on(source, "failed", (data) => {
  finished = true;
  source.close();
  document.getElementById("message").textContent = data.error_message || "Workflow failed";
  body.dataset.outcome = "failed";
});
on(source, "error", () => { body.dataset.unexpectedError = "yes"; });
</script>
</body></html>
"""


def page_html() -> str:
    steps = "".join(f'<li data-step="{name}" data-state="waiting">{name}</li>' for name in NAMES)
    names = "[" + ", ".join(f'"{name}"' for name in NAMES) + "]"
    return PAGE.replace("%STEPS%", steps).replace("%NAMES%", names)


@dataclass
class UI:
    base_url: str
    client: httpx.AsyncClient
    stepper: Stepper
    page: Page
    errors: list[str]

    async def submit(self) -> str:
        response = await self.client.post(TRANSLATION, json=DOCUMENT_REQUEST)
        assert response.status_code == 202, response.text
        return str(response.json()["job_id"])

    async def follow(self, job_id: str) -> None:
        """Open VPSWeb's page on the job: its EventSource connects now."""
        await self.page.goto(f"{self.base_url}/vpsweb-ui/?job={job_id}")
        await expect(self.page.locator("body")).to_have_attribute("data-connected", "yes")

    async def shows(self, progress: str, states: list[str]) -> None:
        await expect(self.page.locator("#progress")).to_have_text(progress)
        for name, state in zip(NAMES, states, strict=True):
            item = self.page.locator(f'[data-step="{name}"]')
            await expect(item).to_have_attribute("data-state", state)

    async def finished(self, outcome: str) -> None:
        body = self.page.locator("body")
        await expect(body).to_have_attribute("data-outcome", outcome)
        await expect(self.page.locator("#violations")).to_have_text("")
        for unexpected in ("data-unexpected-error", "data-connection-errors"):
            assert await body.get_attribute(unexpected) is None, unexpected
        assert self.errors == []


@pytest.fixture
async def ui(browser: Browser, settings_factory: Callable[..., Settings]) -> AsyncIterator[UI]:
    settings = settings_factory(translation={"heartbeat_seconds": 0.2, "max_retries": 0})
    manager = TaskManager(
        settings, breakers=BreakerRegistry(BreakerConfig()), extensions=[TranslationExtension()]
    )
    stepper = Stepper()
    VPSWebAdapter(manager, workflow_factory=stepper)
    app = create_app(settings, manager=manager)
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        context = await browser.new_context()
        page = await context.new_page()
        errors = console_errors(page)
        html = page_html()

        async def vpsweb_page(route: Route) -> None:
            await route.fulfill(status=200, content_type="text/html", body=html)

        await page.route(re.compile(r"/vpsweb-ui/"), vpsweb_page)
        try:
            yield UI(base_url, client, stepper, page, errors)
        finally:
            await context.close()


async def test_vpswebs_ui_follows_a_job_to_completion_connecting_late(ui: UI) -> None:
    gates = ui.stepper.job(0)
    job_id = await ui.submit()
    await gates.step(0)
    gates.release[0].set()
    await gates.step(1)
    await ui.follow(job_id)  # step 1 finished before the page connected: it is replayed
    await ui.shows("33%", ["completed", "running", "waiting"])
    gates.release[1].set()
    await gates.step(2)
    await ui.shows("66%", ["completed", "completed", "running"])
    gates.release[2].set()
    await ui.finished("completed")
    await ui.shows("100%", ["completed"] * 3)
    events = (await ui.page.locator("body").get_attribute("data-events") or "").split()
    assert events[:2] == ["connected", "step_start"]
    assert events.count("step_start") == events.count("step_complete") == 3


async def test_vpswebs_ui_shows_a_failed_job(ui: UI) -> None:
    gates = ui.stepper.job(0)
    gates.fail_at = 1
    job_id = await ui.submit()
    await ui.follow(job_id)  # as soon as it is submitted, before it starts
    gates.release[0].set()
    await gates.step(1)
    await ui.shows("33%", ["completed", "running", "waiting"])
    gates.release[1].set()
    await ui.finished("failed")
    await expect(ui.page.locator("#message")).to_contain_text("Editor Review failed")
    await ui.shows("33%", ["completed", "failed", "waiting"])


async def test_vpswebs_ui_shows_a_cancelled_job_connecting_late(ui: UI) -> None:
    gates = ui.stepper.job(0)
    job_id = await ui.submit()
    await gates.step(0)
    await ui.follow(job_id)
    await ui.shows("0%", ["running", "waiting", "waiting"])
    # Idle while the step runs: VPSWeb's heartbeat events arrive.
    await expect(ui.page.locator("body")).to_have_attribute("data-heartbeats", re.compile("[1-9]"))
    answer = await ui.client.delete(f"{TRANSLATION}/{job_id}")
    assert answer.json()["status"] == "cancelled"
    await ui.finished("failed")  # VPSWeb marks a cancelled task failed
    await expect(ui.page.locator("#message")).to_contain_text("cancel")
