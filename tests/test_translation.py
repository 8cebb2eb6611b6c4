"""Translation jobs end to end against a real loopback OpenAI-compatible server
(tests/llm_server.py): the three steps, checkpoints and resume, cancel, the provider's
breaker, error classification, batch and compare, status and health."""

from __future__ import annotations

import importlib
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import ValidationError

from vpsweb_tasks import (
    BreakerConfig,
    BreakerRegistry,
    ErrorCategory,
    QueueFullError,
    TaskManager,
    TaskStateError,
    TaskStatus,
)
from vpsweb_tasks.breakers import BreakerState
from vpsweb_tasks.config import Settings
from vpsweb_tasks.events import (
    TaskCompleted,
    TaskDeferred,
    TaskFailed,
    TaskProgressed,
    TaskRetryScheduled,
)
from vpsweb_tasks.models import ExecutionOutcome
from vpsweb_tasks.translation import (
    STEP_NAMES,
    STEPS,
    StepCheckpoint,
    TranslationExtension,
    TranslationInput,
    TranslationRequest,
    VPSWebAdapter,
    get_vpsweb_adapter,
)
from vpsweb_tasks.translation.errors import (
    TranslationJobNotFoundError,
    TranslationNotConfiguredError,
)
from vpsweb_tasks.translation.store import list_jobs
from vpsweb_tasks.translation.workflow import build_messages

from .conftest import FakeClock
from .llm_server import DROP, HOLD, FakeLLM, Reply, fake_llm
from .stepped_workflow import Stepper
from .support import EventRecorder, closed_port

pytestmark = pytest.mark.anyio

#: The design document's example request, unchanged.
DOCUMENT_REQUEST = {
    "original_text": "Hello world, how are you?",
    "source_language": "en",
    "target_language": "zh-Hans",
    "workflow_mode": "hybrid",
    "metadata": {"author": "Test Author", "title": "Test Poem"},
}

STEP_MODELS = {
    "initial_translation": "m-initial",
    "editor_review": "m-editor",
    "translator_revision": "m-revision",
    "reasoning": "m-reasoning",
}


def provider(llm: FakeLLM | None, **overrides: Any) -> dict[str, Any]:
    return {
        "local": {
            "base_url": llm.base_url if llm else None,
            "models": STEP_MODELS,
            "timeout": 5,
            **overrides,
        }
    }


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    async with fake_llm() as server:
        yield server


@pytest.fixture
def breakers(clock: FakeClock) -> BreakerRegistry:
    return BreakerRegistry(
        BreakerConfig(failure_threshold=2, recovery_timeout=30, half_open_max_calls=3),
        clock=clock,
    )


def make_manager(
    settings: Settings, breakers: BreakerRegistry, clock: Callable[[], float] | None = None
) -> TaskManager:
    extensions = [TranslationExtension()]
    if clock is None:
        return TaskManager(settings, breakers=breakers, extensions=extensions)
    return TaskManager(settings, breakers=breakers, clock=clock, extensions=extensions)


# --- requests --------------------------------------------------------------------------


def test_requests_normalise_languages_to_vpswebs_names() -> None:
    request = TranslationRequest.model_validate(DOCUMENT_REQUEST)
    assert (request.source_language, request.target_language) == ("English", "Chinese")
    for code, name in [
        ("zh-CN", "Chinese"),
        ("zh-Hans", "Chinese"),
        ("zh", "Chinese"),
        ("Chinese", "Chinese"),  # VPSWeb's own names still work
        ("chinese", "Chinese"),
        ("Simplified Chinese", "Chinese"),
        ("zh-Hans-HK", "Chinese"),  # the script wins over the region
        ("zh-Hant", "Traditional Chinese"),
        ("zh_TW", "Traditional Chinese"),
        ("zh-HK", "Traditional Chinese"),
        ("zh-Hant-TW", "Traditional Chinese"),
        ("Traditional Chinese", "Traditional Chinese"),
    ]:
        assert (
            TranslationRequest(
                original_text="x", source_language="pl", target_language=code
            ).target_language
            == name
        ), code
    assert request.metadata.author == "Test Author"
    assert request.workflow_mode == "hybrid"


@pytest.mark.parametrize(
    ("target", "script"),
    [("zh-Hant", "traditional"), ("zh-TW", "traditional"), ("zh-Hans", "simplified")],
)
def test_prompts_keep_the_chinese_script(target: str, script: str) -> None:
    request = TranslationRequest(original_text="x", source_language="en", target_language=target)
    input = TranslationInput(
        original_poem="x",
        source_lang=request.source_language,
        target_lang=request.target_language,
        workflow_mode=request.workflow_mode,
    )
    done = {
        step: StepCheckpoint(
            step=step,
            name=STEP_NAMES[step],
            output="o",
            model="m",
            duration_seconds=0,
            finished_at=0,
            attempt=1,
        )
        for step in STEPS
    }
    for step in ("initial_translation", "translator_revision"):
        system, user = build_messages(step, input, done)
        assert f"Use {script} Chinese characters." in system["content"]
        assert f"into {request.target_language}" in system["content"] + user["content"]
    if script == "traditional":
        assert "Traditional Chinese" in build_messages("editor_review", input, done)[0]["content"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"original_text": ""}, "original_text"),
        ({"original_text": "   "}, "original_text"),
        ({"original_text": "x" * 50_001}, "original_text"),
        ({"target_language": "Klingon"}, "target_language"),
        ({"workflow_mode": "fast"}, "workflow_mode"),
        ({"metadata": {"title": "t" * 501}}, "metadata.title"),
        ({"target_language": "English"}, ""),
    ],
)
def test_invalid_requests_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        TranslationRequest.model_validate({**DOCUMENT_REQUEST, **change})
    locations = {".".join(str(p) for p in error["loc"]) for error in raised.value.errors()}
    assert field in locations


def test_fifty_thousand_characters_are_accepted() -> None:
    request = TranslationRequest.model_validate({**DOCUMENT_REQUEST, "original_text": "x" * 50_000})
    assert len(request.original_text) == 50_000


# --- the workflow ----------------------------------------------------------------------


async def test_a_job_runs_the_three_steps_and_keeps_each_output(
    llm: FakeLLM, settings_factory: Callable[..., Settings], breakers: BreakerRegistry
) -> None:
    settings = settings_factory(providers=provider(llm, api_key_env="TEST_LLM_KEY"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TEST_LLM_KEY", "sk-test")
        async with make_manager(settings, breakers) as manager:
            recorder = EventRecorder()
            manager.events.add_listener(recorder)
            adapter = get_vpsweb_adapter(manager)
            job = await adapter.submit(DOCUMENT_REQUEST)
            assert job.status is TaskStatus.PENDING
            assert (job.source_language, job.target_language) == ("English", "Chinese")
            record = await manager.wait(job.job_id, timeout=10)
            assert record.status is TaskStatus.COMPLETED, record.error_message

            result = await adapter.result(job.job_id)
    assert [call.model for call in llm.calls] == ["m-initial", "m-editor", "m-revision"]
    assert {call.authorization for call in llm.calls} == {"Bearer sk-test"}
    assert [step.step for step in result.steps] == list(STEPS)
    assert [step.name for step in result.steps] == [
        "Initial Translation",
        "Editor Review",
        "Translator Revision",
    ]
    assert result.steps[0].output == "m-initial translation, call 1"
    assert result.steps[0].notes == "notes from m-initial"
    assert result.final_translation == "m-revision translation, call 3"
    assert result.models_used == {
        "initial_translation": "m-initial",
        "editor_review": "m-editor",
        "translator_revision": "m-revision",
    }
    assert result.token_usage.total_tokens == 45
    assert result.duration_seconds == pytest.approx(
        sum(step.duration_seconds for step in result.steps)
    )
    assert result.metadata == {"author": "Test Author", "title": "Test Poem"}
    # Each step builds on the ones before it.
    review_prompt = llm.calls[1].messages[-1]["content"]
    assert "m-initial translation, call 1" in review_prompt
    revision_prompt = llm.calls[2].messages[-1]["content"]
    assert "m-editor translation, call 2" in revision_prompt
    assert "Chinese" in llm.calls[0].messages[0]["content"]
    # Progress under VPSWeb's step names: start and finish of each, 0 -> 1/3 -> 2/3 -> 1.
    steps = [
        (e.update.metadata["event"], e.update.metadata["step_name"], round(e.update.progress, 2))
        for e in recorder.of(TaskProgressed)
        if e.update.metadata
    ]
    assert steps == [
        ("step_start", "Initial Translation", 0.0),
        ("step_complete", "Initial Translation", 0.33),
        ("step_start", "Editor Review", 0.33),
        ("step_complete", "Editor Review", 0.67),
        ("step_start", "Translator Revision", 0.67),
        ("step_complete", "Translator Revision", 1.0),
    ]


async def test_a_job_failing_at_step_three_resumes_at_step_three(
    llm: FakeLLM,
    settings_factory: Callable[..., Settings],
    breakers: BreakerRegistry,
    storage: dict[str, Any],
) -> None:
    # On both backends: the checkpoints are what the retry resumes from.
    llm.reply(Reply(status=500), model="m-revision")
    settings = settings_factory(providers=provider(llm), storage=storage)
    async with make_manager(settings, breakers) as manager:
        adapter = get_vpsweb_adapter(manager)
        job = await adapter.submit(DOCUMENT_REQUEST)
        record = await manager.wait(job.job_id, timeout=10)
        assert record.status is TaskStatus.COMPLETED, record.error_message
        executions = await manager.list_executions(job.job_id)
        result = await adapter.result(job.job_id)
    # The retry called the server for step 3 only: steps 1 and 2 were paid for once.
    assert [call.model for call in llm.calls] == [
        "m-initial",
        "m-editor",
        "m-revision",
        "m-revision",
    ]
    assert [(e.outcome, e.error_category) for e in executions] == [
        (ExecutionOutcome.FAILED, ErrorCategory.EXTERNAL_SERVICE),
        (ExecutionOutcome.COMPLETED, None),
    ]
    assert [step.attempt for step in result.steps] == [1, 1, 2]
    assert result.final_translation == "m-revision translation, call 4"


async def test_an_auth_failure_is_not_retried_and_a_retry_resumes_after_the_fix(
    llm: FakeLLM, settings_factory: Callable[..., Settings], breakers: BreakerRegistry
) -> None:
    llm.reply(Reply(status=401), model="m-editor")
    async with make_manager(settings_factory(providers=provider(llm)), breakers) as manager:
        adapter = get_vpsweb_adapter(manager)
        job = await adapter.submit(DOCUMENT_REQUEST)
        record = await manager.wait(job.job_id, timeout=10)
        assert (record.status, record.attempts, record.error_category) == (
            TaskStatus.FAILED,
            1,
            ErrorCategory.PERMISSION,
        )
        assert "HTTP 401" in (record.error_message or "")
        failed = await adapter.status(job.job_id)
        assert (failed.steps_completed, failed.current_step) == (
            ["initial_translation"],
            "editor_review",
        )
        # The failed job still shows what it paid for.
        assert [(s.step, s.output, s.model) for s in failed.steps] == [
            ("initial_translation", "m-initial translation, call 1", "m-initial")
        ]
        # A 401 means the provider answered: it does not count against its breaker.
        assert breakers.get("llm:local").statistics().consecutive_failures == 0
        with pytest.raises(TaskStateError):
            await adapter.result(job.job_id)

        retried = await adapter.retry(job.job_id)
        assert retried.status is TaskStatus.PENDING
        record = await manager.wait(job.job_id, timeout=10)
        assert record.status is TaskStatus.COMPLETED
        with pytest.raises(TaskStateError, match="cannot retry"):
            await adapter.retry(job.job_id)
    assert [call.model for call in llm.calls] == ["m-initial", "m-editor", "m-editor", "m-revision"]


async def test_cancelling_a_job_another_worker_runs_answers_cancel_requested(
    llm: FakeLLM, settings_factory: Callable[..., Settings], breakers: BreakerRegistry
) -> None:
    llm.reply(HOLD, model="m-editor")
    worker_settings = settings_factory(providers=provider(llm))
    api_settings = settings_factory(providers=provider(llm), background_tasks={"enabled": False})
    async with (
        make_manager(worker_settings, breakers) as worker,
        make_manager(api_settings, breakers) as api,
    ):
        adapter = get_vpsweb_adapter(api)
        job = await adapter.submit(DOCUMENT_REQUEST)
        await llm.wait_for_calls(2)  # step 2 is in flight in the worker
        answer = await adapter.cancel(job.job_id)
        # Not a bare "running": a cancel was requested, which the worker carries out.
        assert (answer.status, answer.cancel_requested) == (TaskStatus.RUNNING, True)
        await llm.wait_until(lambda s: s.disconnects == 1)
        assert (await worker.wait(job.job_id, timeout=10)).status is TaskStatus.CANCELLED
        state = await adapter.status(job.job_id)
        assert (state.status, state.cancel_requested) == (TaskStatus.CANCELLED, False)


async def test_a_cancelled_job_stops_calling_the_server_and_stays_cancelled(
    llm: FakeLLM, settings_factory: Callable[..., Settings], breakers: BreakerRegistry
) -> None:
    llm.reply(HOLD, model="m-editor")
    async with make_manager(settings_factory(providers=provider(llm)), breakers) as manager:
        adapter = get_vpsweb_adapter(manager)
        job = await adapter.submit(DOCUMENT_REQUEST)
        await llm.wait_for_calls(2)  # step 2 is in flight, held by the server
        cancelled = await adapter.cancel(job.job_id)
        assert cancelled.job_id == job.job_id
        # It ran in this process: stopped by the time the answer comes.
        assert (cancelled.status, cancelled.cancel_requested) == (TaskStatus.CANCELLED, False)
        # The request in flight is abandoned: the server sees its client go away.
        await llm.wait_until(lambda s: s.disconnects == 1)
        record = await manager.wait(job.job_id, timeout=10)
        assert record.status is TaskStatus.CANCELLED
        llm.release()
        for _ in range(3):  # the dispatcher looks again: nothing picks the job up
            await manager.queue.next_round()
        state = await adapter.status(job.job_id)
        executions = await manager.list_executions(job.job_id)
        with pytest.raises(TaskStateError):
            await adapter.cancel(job.job_id)
        with pytest.raises(TaskStateError):
            await adapter.retry(job.job_id)
    assert [call.model for call in llm.calls] == ["m-initial", "m-editor"]
    assert state.status is TaskStatus.CANCELLED
    assert state.steps_completed == ["initial_translation"]  # paid-for work is kept
    assert [e.outcome for e in executions] == [ExecutionOutcome.CANCELLED]


async def test_jobs_wait_out_an_open_breaker_and_finish_when_the_provider_recovers(
    llm: FakeLLM,
    settings_factory: Callable[..., Settings],
    breakers: BreakerRegistry,
    clock: FakeClock,
) -> None:
    settings = settings_factory(
        providers=provider(llm), background_tasks={"max_concurrent_jobs": 3}
    )
    async with make_manager(settings, breakers, clock) as manager:
        recorder = EventRecorder()
        manager.events.add_listener(recorder)
        adapter = get_vpsweb_adapter(manager)
        # 1. An outage: the first step of three jobs fails; two failures open the breaker.
        #    (The server holds its answers until all three calls are in.)
        llm.always(Reply(status=503, hold=True))
        jobs = [await adapter.submit(DOCUMENT_REQUEST) for _ in range(3)]
        await llm.wait_for_calls(3)
        llm.release()
        await recorder.wait_for(TaskRetryScheduled, 3)
        breaker = breakers.get("llm:local")
        assert breaker.state is BreakerState.OPEN
        opened_at = clock.now
        calls_in_outage = len(llm.calls)
        assert calls_in_outage == 3

        # 2. Their retries come due while it is open: deferred, no call, no attempt spent.
        clock.advance(1)
        manager.queue.notify()
        deferred = await recorder.wait_for(TaskDeferred, 3)
        assert {event.retry_at for event in deferred} == {opened_at + 30}
        assert len(llm.calls) == calls_in_outage
        for job in jobs:
            state = await adapter.status(job.job_id)
            assert (state.status, state.attempts) == (TaskStatus.RETRYING, 1)
        status = await adapter.integration_status()
        assert [(b.name, b.state) for b in status.breakers] == [("llm:local", "open")]

        # 3. The provider recovers; after the recovery timeout the jobs run to the end.
        llm.always(Reply())
        clock.advance(30)
        manager.queue.notify()
        completed = await recorder.wait_for(TaskCompleted, 3)
        assert {event.task_id for event in completed} == {job.job_id for job in jobs}
        assert breaker.state is BreakerState.CLOSED
        assert recorder.of(TaskFailed, will_retry=False) == []
        for job in jobs:
            record = await manager.get_task(job.job_id)
            assert (record.status, record.attempts) == (TaskStatus.COMPLETED, 2)
    assert len(llm.calls) == calls_in_outage + 9


async def test_a_rate_limit_is_retried_no_sooner_than_retry_after(
    llm: FakeLLM,
    settings_factory: Callable[..., Settings],
    breakers: BreakerRegistry,
    clock: FakeClock,
) -> None:
    llm.reply(Reply(status=429, headers={"Retry-After": "40"}), model="m-initial")
    async with make_manager(settings_factory(providers=provider(llm)), breakers, clock) as manager:
        recorder = EventRecorder()
        manager.events.add_listener(recorder)
        adapter = get_vpsweb_adapter(manager)
        job = await adapter.submit(DOCUMENT_REQUEST)
        (scheduled,) = await recorder.wait_for(TaskRetryScheduled)
        assert scheduled.category is ErrorCategory.EXTERNAL_SERVICE
        assert scheduled.retry_at >= clock.now + 40
        clock.advance(39)
        manager.queue.notify()
        await manager.queue.next_round()
        assert len(llm.calls) == 1  # not yet
        clock.advance(scheduled.retry_at - clock.now)
        manager.queue.notify()
        record = await manager.wait(job.job_id, timeout=10)
    assert record.status is TaskStatus.COMPLETED
    assert [call.model for call in llm.calls] == ["m-initial"] * 2 + ["m-editor", "m-revision"]


async def test_dropped_connections_and_timeouts_are_external_service_failures(
    llm: FakeLLM, settings_factory: Callable[..., Settings], breakers: BreakerRegistry
) -> None:
    llm.reply(DROP, model="m-initial")
    llm.reply(HOLD, model="m-editor")  # never released: the call times out
    settings = settings_factory(providers=provider(llm, timeout=0.2))
    async with make_manager(settings, breakers) as manager:
        adapter = get_vpsweb_adapter(manager)
        job = await adapter.submit(DOCUMENT_REQUEST)
        record = await manager.wait(job.job_id, timeout=10)
        executions = await manager.list_executions(job.job_id)
    assert record.status is TaskStatus.COMPLETED, record.error_message
    assert [(e.error_category, e.error_type) for e in executions] == [
        (ErrorCategory.EXTERNAL_SERVICE, "ProviderUnavailableError"),
        (ErrorCategory.EXTERNAL_SERVICE, "ProviderUnavailableError"),
        (None, None),
    ]
    assert "connection failed" in (executions[0].error_message or "")
    assert "no answer" in (executions[1].error_message or "")
    assert [call.model for call in llm.calls] == [
        "m-initial",
        "m-initial",
        "m-editor",
        "m-editor",
        "m-revision",
    ]


# --- batch and compare ---------------------------------------------------------------------


async def test_a_batch_gives_one_job_per_request(
    llm: FakeLLM, settings_factory: Callable[..., Settings], breakers: BreakerRegistry
) -> None:
    async with make_manager(settings_factory(providers=provider(llm)), breakers) as manager:
        adapter = get_vpsweb_adapter(manager)
        poems = [{**DOCUMENT_REQUEST, "original_text": f"poem {n}"} for n in range(3)]
        jobs = await adapter.batch(poems)
        assert len({job.job_id for job in jobs}) == 3
        for job in jobs:
            assert (await manager.wait(job.job_id, timeout=10)).status is TaskStatus.COMPLETED
        listed = await adapter.list_jobs(statuses=[TaskStatus.COMPLETED])
    assert {job.job_id for job in listed} == {job.job_id for job in jobs}
    assert len(llm.calls) == 9


async def stored_rows(manager: TaskManager) -> tuple[int, int]:
    """Tasks (any status) and translation jobs in the manager's store."""
    tasks = sum((await manager.store.count_tasks()).values())
    return tasks, len(await manager.store.run(list_jobs(limit=1000)))


async def test_a_batch_is_accepted_all_or_nothing(
    llm: FakeLLM,
    settings_factory: Callable[..., Settings],
    breakers: BreakerRegistry,
    storage: dict[str, Any],
) -> None:
    settings = settings_factory(
        providers=provider(llm),
        background_tasks={"enabled": False, "max_queue_size": 4},
        storage=storage,
    )
    async with make_manager(settings, breakers) as manager:
        adapter = get_vpsweb_adapter(manager)
        bad = [DOCUMENT_REQUEST, {**DOCUMENT_REQUEST, "target_language": "Klingon"}]
        with pytest.raises(ValidationError) as raised:
            await adapter.batch(bad)
        assert [error["loc"] for error in raised.value.errors()] == [
            ("requests", 1, "target_language")
        ]
        with pytest.raises(ValidationError):
            await adapter.batch([])
        first = await adapter.submit(DOCUMENT_REQUEST)
        # Room for 3 more: a batch of 4 is refused whole and leaves no row behind (the
        # old way stored and then cancelled the ones that fit).
        with pytest.raises(QueueFullError) as full:
            await adapter.batch([DOCUMENT_REQUEST] * 4)
        assert (full.value.limit, full.value.size, full.value.requested) == (4, 1, 4)
        assert await stored_rows(manager) == (1, 1)
        assert [job.job_id for job in await adapter.list_jobs()] == [first.job_id]
        assert len(await adapter.batch([DOCUMENT_REQUEST] * 2)) == 2
        # Room for 1: a comparison of two modes is refused whole too.
        compare = {k: v for k, v in DOCUMENT_REQUEST.items() if k != "workflow_mode"}
        with pytest.raises(QueueFullError):
            await adapter.compare({**compare, "workflow_modes": ["hybrid", "reasoning"]})
        assert await stored_rows(manager) == (3, 3)
        comparison = await adapter.compare({**compare, "workflow_modes": ["hybrid"]})
        assert len(comparison.entries) == 1
        assert await stored_rows(manager) == (4, 4)
        assert {job.status for job in await adapter.list_jobs()} == {TaskStatus.PENDING}


async def test_concurrent_batches_never_share_the_last_room(
    llm: FakeLLM, settings_factory: Callable[..., Settings], breakers: BreakerRegistry
) -> None:
    """Two batches race for room for one of them (SQLite: writers take turns, so the
    limit is exact): one is stored whole, the other refused whole."""
    settings = settings_factory(
        providers=provider(llm), background_tasks={"enabled": False, "max_queue_size": 5}
    )
    async with make_manager(settings, breakers) as manager:
        adapter = get_vpsweb_adapter(manager)
        outcomes: list[int | str] = []

        async def submit(n: int) -> None:
            poems = [{**DOCUMENT_REQUEST, "original_text": f"batch {n} poem {i}"} for i in range(3)]
            try:
                outcomes.append(len(await adapter.batch(poems)))
            except QueueFullError:
                outcomes.append("full")

        async with anyio.create_task_group() as tg:
            for n in range(2):
                tg.start_soon(submit, n)
        assert sorted(outcomes, key=str) == [3, "full"]
        assert await stored_rows(manager) == (3, 3)
        assert {job.status for job in await adapter.list_jobs()} == {TaskStatus.PENDING}


async def test_compare_runs_one_text_through_several_modes_side_by_side(
    llm: FakeLLM, settings_factory: Callable[..., Settings], breakers: BreakerRegistry
) -> None:
    models = {"default": "m-initial", "reasoning": "m-reasoning"}
    settings = settings_factory(providers=provider(llm, models=models))
    async with make_manager(settings, breakers) as manager:
        adapter = get_vpsweb_adapter(manager)
        comparison = await adapter.compare(
            {
                "original_text": "Hello world",
                "source_language": "en",
                "target_language": "pl",
                "workflow_modes": ["reasoning", "hybrid"],
                "wait": True,
                "timeout": 10,
            }
        )
        again = await adapter.comparison([e.job_id for e in comparison.entries])
        with pytest.raises(ValidationError):
            await adapter.compare({**DOCUMENT_REQUEST, "workflow_modes": ["speedy"]})
    assert comparison.complete
    assert (comparison.source_language, comparison.target_language) == ("English", "Polish")
    assert [e.workflow_mode for e in comparison.entries] == ["reasoning", "hybrid"]
    assert [set(e.models_used.values()) for e in comparison.entries] == [
        {"m-reasoning"},
        {"m-initial"},
    ]
    assert all(e.status is TaskStatus.COMPLETED for e in comparison.entries)
    assert all(e.final_translation for e in comparison.entries)
    assert comparison.entries[0].final_translation != comparison.entries[1].final_translation
    assert again == comparison


# --- configuration, status and health -----------------------------------------------------


async def test_without_a_provider_submits_are_refused_and_status_says_what_to_configure(
    settings_factory: Callable[..., Settings], breakers: BreakerRegistry
) -> None:
    async with make_manager(settings_factory(), breakers) as manager:
        adapter = get_vpsweb_adapter(manager)
        with pytest.raises(TranslationNotConfiguredError, match=r"providers\.<name>\.base_url"):
            await adapter.submit(DOCUMENT_REQUEST)
        status = await adapter.integration_status()
        health = await adapter.health()
        assert await adapter.list_jobs() == []
        with pytest.raises(TranslationJobNotFoundError):
            await adapter.status("no-such-job")
    assert not status.configured
    assert status.problems
    assert "providers.<name>.models" in status.problems[0]
    assert health.status == "not_configured"


@pytest.mark.parametrize(
    ("sections", "problem"),
    [
        ({"providers": {"local": {"models": STEP_MODELS}}}, "providers.local.base_url"),
        (
            {"providers": {"local": {"base_url": "http://x/v1", "models": {"hybrid": "m"}}}},
            "no model for workflow mode reasoning",
        ),
        (
            {"providers": provider(None, base_url="http://x/v1", api_key_env="NO_SUCH_KEY_VAR")},
            "NO_SUCH_KEY_VAR",
        ),
        (
            {
                "providers": provider(None, base_url="http://x"),
                "translation": {"provider": "cloud"},
            },
            "translation.provider is 'cloud'",
        ),
    ],
)
async def test_incomplete_configuration_is_named(
    settings_factory: Callable[..., Settings],
    breakers: BreakerRegistry,
    sections: dict[str, Any],
    problem: str,
) -> None:
    async with make_manager(settings_factory(**sections), breakers) as manager:
        status = await get_vpsweb_adapter(manager).integration_status()
    assert any(problem in text for text in status.problems), status.problems


async def test_integration_status_and_a_live_health_check(
    llm: FakeLLM, settings_factory: Callable[..., Settings], breakers: BreakerRegistry
) -> None:
    async with make_manager(settings_factory(providers=provider(llm)), breakers) as manager:
        adapter = get_vpsweb_adapter(manager)
        job = await adapter.submit(DOCUMENT_REQUEST)
        await manager.wait(job.job_id, timeout=10)
        status = await adapter.integration_status()
        healthy = await adapter.health()
        llm.models_listed = ["m-initial"]
        degraded = await adapter.health()
    assert status.configured
    assert (status.provider, status.base_url, status.workflow) == (
        "local",
        llm.base_url,
        "builtin",  # translation.workflow's own value
    )
    assert status.models["hybrid"] == {
        "initial_translation": "m-initial",
        "editor_review": "m-editor",
        "translator_revision": "m-revision",
    }
    assert status.models["reasoning"]["editor_review"] == "m-editor"  # the step's model wins
    assert status.jobs["completed"] == 1
    assert [(b.name, b.state) for b in status.breakers] == [("llm:local", "closed")]
    assert (healthy.status, healthy.reachable, healthy.breaker_state) == ("healthy", True, "closed")
    assert healthy.latency_ms is not None
    assert healthy.models_missing == []
    assert degraded.status == "degraded"
    assert degraded.models_missing == ["m-editor", "m-reasoning", "m-revision"]


async def test_an_unreachable_provider_is_unhealthy_within_the_time_bound(
    settings_factory: Callable[..., Settings], breakers: BreakerRegistry
) -> None:
    port = await closed_port()
    settings = settings_factory(
        providers=provider(None, base_url=f"http://127.0.0.1:{port}/v1"),
        translation={"health_check_timeout": 1},
    )
    async with make_manager(settings, breakers) as manager:
        with anyio.fail_after(2):
            health = await get_vpsweb_adapter(manager).health()
    assert (health.status, health.reachable) == ("unhealthy", False)
    assert health.error


# --- a workflow of VPSWeb's own ----------------------------------------------------------


class VPSWebLikeWorkflow:
    """VPSWeb's duck-typed interface: execute / progress_callback / cancel."""

    def __init__(
        self, input: TranslationInput, gate: anyio.Event | None, started: anyio.Event
    ) -> None:
        self.input = input
        self.gate = gate
        self.progress_callback: Any = None
        self.cancelled = False
        self.started = started

    def cancel(self) -> None:
        self.cancelled = True

    async def execute(self, input: TranslationInput) -> dict[str, Any]:
        self.started.set()
        await self.progress_callback("Initial Translation", {"status": "running"})
        if self.gate is not None:
            await self.gate.wait()
        await self.progress_callback(
            "Initial Translation", {"status": "completed", "tokens_used": 7, "duration": 0.1}
        )
        return {
            "workflow_id": "w1",
            "revised_translation": {"revised_translation": f"[{input.target_lang}] done"},
        }


async def test_vpswebs_own_workflow_can_be_injected_and_is_really_cancelled(
    settings_factory: Callable[..., Settings], breakers: BreakerRegistry
) -> None:
    made: list[VPSWebLikeWorkflow] = []
    gate: anyio.Event | None = None
    started = anyio.Event()

    def factory(input: TranslationInput) -> VPSWebLikeWorkflow:
        made.append(VPSWebLikeWorkflow(input, gate, started))
        return made[-1]

    async with make_manager(settings_factory(), breakers) as manager:  # no provider needed
        adapter = VPSWebAdapter(manager, workflow_factory=factory)
        assert get_vpsweb_adapter(manager) is adapter
        job = await adapter.submit(DOCUMENT_REQUEST)
        await manager.wait(job.job_id, timeout=10)
        result = await adapter.result(job.job_id)
        assert result.final_translation == "[Chinese] done"
        assert result.workflow_output == {
            "workflow_id": "w1",
            "revised_translation": {"revised_translation": "[Chinese] done"},
        }
        assert made[0].input.original_poem == "Hello world, how are you?"

        gate = anyio.Event()  # never set: the next job runs until cancelled
        started = anyio.Event()
        job = await adapter.submit(DOCUMENT_REQUEST)
        with anyio.fail_after(10):
            await started.wait()
        await adapter.cancel(job.job_id)
        record = await manager.wait(job.job_id, timeout=10)
        status = await adapter.integration_status()
    assert record.status is TaskStatus.CANCELLED
    assert made[1].cancelled
    assert status.workflow.endswith("factory")
    assert status.configured


#: A stand-in for the vpsweb package, built from its source (see its __init__.py).
VPSWEB_DOUBLE = Path(__file__).resolve().parent / "vpsweb_double"


@pytest.fixture
def vpsweb_double(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The vpsweb double, importable; yields its ``services.config`` module (the global
    ConfigFacade starts uninitialised)."""
    monkeypatch.syspath_prepend(str(VPSWEB_DOUBLE))
    config = importlib.import_module("vpsweb.services.config")
    yield config
    for name in [n for n in sys.modules if n == "vpsweb" or n.startswith("vpsweb.")]:
        del sys.modules[name]


def vpsweb_facade(double: Any, mode: str) -> None:
    """Initialise VPSWeb's global ConfigFacade with ``mode`` as its main config's mode,
    as VPSWeb's app does at startup."""
    models = importlib.import_module("vpsweb.models.config")
    complete = models.CompleteConfig(main=models.MainConfig(workflow_mode=mode))
    double.initialize_config_facade(complete)


async def test_translation_workflow_vpsweb_runs_vpswebs_own_workflow_when_importable(
    vpsweb_double: Any, settings_factory: Callable[..., Settings], breakers: BreakerRegistry
) -> None:
    vpsweb_facade(vpsweb_double, "hybrid")
    settings = settings_factory(translation={"workflow": "vpsweb"})  # no provider here
    async with make_manager(settings, breakers) as manager:
        recorder = EventRecorder()
        manager.events.add_listener(recorder)
        adapter = get_vpsweb_adapter(manager)
        job = await adapter.submit({**DOCUMENT_REQUEST, "workflow_mode": "reasoning"})
        record = await manager.wait(job.job_id, timeout=10)
        assert record.status is TaskStatus.COMPLETED, record.error_message
        result = await adapter.result(job.job_id)
        status = await adapter.integration_status()
        health = await adapter.health()
    assert result.final_translation == "reasoning/Chinese: Hello world, how are you?"
    assert result.workflow_output is not None
    assert result.workflow_output["workflow_mode"] == "reasoning"
    steps = [
        (e.update.metadata["event"], e.update.metadata["step"])
        for e in recorder.of(TaskProgressed)
        if e.update.metadata
    ]
    assert steps == [(kind, step) for step in STEPS for kind in ("step_start", "step_complete")]
    assert (status.workflow, status.configured) == ("vpsweb", True)
    assert health.status == "unchecked"


async def test_vpswebs_workflow_runs_each_job_in_its_own_mode(
    vpsweb_double: Any, settings_factory: Callable[..., Settings], breakers: BreakerRegistry
) -> None:
    # VPSWeb's TranslationWorkflow takes its mode from the global facade and ignores its
    # workflow_mode argument (src/vpsweb/core/workflow.py, __init__ and _get_workflow_mode):
    workflows = importlib.import_module("vpsweb.core.workflow")
    modes = importlib.import_module("vpsweb.models.config").WorkflowMode
    vpsweb_facade(vpsweb_double, "hybrid")
    as_asked = workflows.TranslationWorkflow(workflow_mode=modes.REASONING)
    assert as_asked._get_workflow_mode() is modes.HYBRID
    # ... so the adapter hands each job the facade with the job's own mode.
    settings = settings_factory(translation={"workflow": "vpsweb"})
    async with make_manager(settings, breakers) as manager:
        adapter = get_vpsweb_adapter(manager)
        comparison = await adapter.compare(
            {
                "original_text": "Ala ma kota",
                "source_language": "pl",
                "target_language": "zh-TW",
                "wait": True,
                "timeout": 10,
            }
        )
        jobs = [await adapter.status(entry.job_id) for entry in comparison.entries]
        results = [await adapter.result(entry.job_id) for entry in comparison.entries]
    assert comparison.complete
    assert [entry.final_translation for entry in comparison.entries] == [
        f"{mode}/Chinese: Ala ma kota" for mode in ("reasoning", "non_reasoning", "hybrid")
    ]
    # VPSWeb knows "Chinese" only: the script travels in the metadata.
    assert [(r.workflow_output or {})["metadata"] for r in results] == [
        {"target_script": "traditional"}
    ] * 3
    assert {job.target_language for job in jobs} == {"Traditional Chinese"}
    assert all(job.steps_completed == list(STEPS) for job in jobs)


async def test_vpswebs_workflow_without_its_config_facade_fails_the_job_saying_so(
    vpsweb_double: Any, settings_factory: Callable[..., Settings], breakers: BreakerRegistry
) -> None:
    settings = settings_factory(translation={"workflow": "vpsweb"})
    async with make_manager(settings, breakers) as manager:
        job = await get_vpsweb_adapter(manager).submit(DOCUMENT_REQUEST)
        record = await manager.wait(job.job_id, timeout=10)
    assert record.status is TaskStatus.FAILED
    assert "initialize_config_facade" in (record.error_message or "")


async def test_translation_workflow_vpsweb_without_the_package_is_a_named_problem(
    settings_factory: Callable[..., Settings], breakers: BreakerRegistry
) -> None:
    settings = settings_factory(translation={"workflow": "vpsweb"})
    async with make_manager(settings, breakers) as manager:
        adapter = get_vpsweb_adapter(manager)
        with pytest.raises(TranslationNotConfiguredError, match="vpsweb package cannot be"):
            await adapter.submit(DOCUMENT_REQUEST)


async def test_an_injected_workflows_steps_show_in_the_jobs_state(
    settings_factory: Callable[..., Settings], breakers: BreakerRegistry
) -> None:
    # Injected workflows write no checkpoints: the state comes from their progress callbacks.
    stepper = Stepper()
    settings = settings_factory(translation={"max_retries": 0})
    async with make_manager(settings, breakers) as manager:
        adapter = VPSWebAdapter(manager, workflow_factory=stepper)
        job_id = (await adapter.submit(DOCUMENT_REQUEST)).job_id
        gates = stepper.job(0)
        seen = []
        for index in range(len(STEPS)):
            await gates.step(index)
            job = await adapter.status(job_id)
            seen.append((job.current_step, job.steps_completed, list(job.step_states.values())))
            gates.release[index].set()
        await manager.wait(job_id, timeout=10)
        done = await adapter.status(job_id)

        failing = stepper.job(1)
        failing.fail_at = 1
        failed_id = (await adapter.submit(DOCUMENT_REQUEST)).job_id
        await failing.step(0)
        failing.release[0].set()
        await failing.step(1)
        failing.release[1].set()
        await manager.wait(failed_id, timeout=10)
        failed = await adapter.status(failed_id)
    assert seen == [
        ("initial_translation", [], ["running", "waiting", "waiting"]),
        ("editor_review", ["initial_translation"], ["completed", "running", "waiting"]),
        (
            "translator_revision",
            ["initial_translation", "editor_review"],
            ["completed", "completed", "running"],
        ),
    ]
    assert (done.status, done.current_step, done.steps_completed) == (
        TaskStatus.COMPLETED,
        None,
        list(STEPS),
    )
    assert done.steps == []  # no checkpoints: a retry would run it from the start
    # The step running when the attempt failed is the one shown as failed.
    assert (failed.status, failed.current_step, failed.steps_completed) == (
        TaskStatus.FAILED,
        "editor_review",
        ["initial_translation"],
    )
    assert failed.step_states == {
        "initial_translation": "completed",
        "editor_review": "failed",
        "translator_revision": "waiting",
    }
