"""The VPSWeb adapter: translation jobs as durable background tasks.

A job is a task of type ``translation`` and a ``translation_jobs`` row, stored together in
one transaction; the job id is the task's id, so every task route (status, events,
progress) works for jobs too. The task runs a workflow (the built-in
:class:`~vpsweb_tasks.translation.workflow.LLMTranslationWorkflow`, or VPSWeb's own through
``workflow_factory``) under the task's cancel scope: cancelling a job stops the step in
flight. Failures are retried by the task system only (one retry layer), and a retry of the
built-in workflow resumes at its first unfinished step. Calls to a provider go through one
circuit breaker per provider; while it is open, jobs wait (``retrying``) without spending
attempts.

::

    adapter = get_vpsweb_adapter(manager)          # registered with every manager
    job = await adapter.submit({"original_text": "...", "source_language": "en",
                                "target_language": "zh-Hans", "workflow_mode": "hybrid"})
    await manager.wait(job.job_id)
    result = await adapter.result(job.job_id)
"""

from __future__ import annotations

import json
import ssl
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.to_thread
import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..config import ProviderSettings
from ..context import TaskContext
from ..errors import (
    TaskStateError,
    TranslationJobNotFoundError,
    TranslationNotConfiguredError,
)
from ..models import TaskDefinition, TaskRecord, TaskStatus
from ..storage.base import NewTask, NewTranslationJob, TranslationJobRow
from .client import ChatClient, breaker_name
from .models import (
    MAX_TEXT_LENGTH,
    STEP_NAMES,
    STEPS,
    Comparison,
    ComparisonEntry,
    Language,
    StepCheckpoint,
    TokenUsage,
    TranslationInput,
    TranslationJob,
    TranslationMetadata,
    TranslationOutput,
    TranslationRequest,
    TranslationResult,
    WorkflowMode,
)
from .vpsweb import vpsweb_workflow_factory
from .workflow import LLMTranslationWorkflow, TranslationWorkflow

if TYPE_CHECKING:
    from ..manager import TaskManager

__all__ = [
    "TASK_TYPE",
    "BreakerInfo",
    "CompareRequest",
    "IntegrationStatus",
    "ProviderHealth",
    "TranslationBatch",
    "VPSWebAdapter",
    "WorkflowFactory",
    "get_vpsweb_adapter",
]

TASK_TYPE = "translation"

#: Makes the workflow of one job (VPSWeb: ``lambda input: TranslationWorkflow(...)``).
WorkflowFactory = Callable[[TranslationInput], TranslationWorkflow]

_adapters: weakref.WeakKeyDictionary[TaskManager, VPSWebAdapter] = weakref.WeakKeyDictionary()


def get_vpsweb_adapter(manager: TaskManager) -> VPSWebAdapter:
    """The adapter serving ``manager`` (every manager gets one with the built-in
    workflow; constructing another replaces it)."""
    adapter = _adapters.get(manager)
    return adapter if adapter is not None else VPSWebAdapter(manager)


class TranslationBatch(BaseModel):
    """Several jobs, accepted all together or not at all."""

    model_config = ConfigDict(extra="forbid")

    requests: list[TranslationRequest] = Field(min_length=1)


class CompareRequest(BaseModel):
    """One text through several workflow modes."""

    model_config = ConfigDict(extra="forbid")

    original_text: str = Field(min_length=1, max_length=MAX_TEXT_LENGTH)
    source_language: Language
    target_language: Language
    workflow_modes: list[WorkflowMode] = Field(
        default_factory=lambda: list(WorkflowMode), min_length=1, max_length=3
    )
    metadata: TranslationMetadata = Field(default_factory=TranslationMetadata)
    wait: bool = False
    """Answer once every job has finished (or ``timeout`` passed)."""
    timeout: float = Field(default=300.0, gt=0, le=3600)

    @field_validator("workflow_modes")
    @classmethod
    def _distinct(cls, modes: list[WorkflowMode]) -> list[WorkflowMode]:
        if len(set(modes)) != len(modes):
            raise ValueError("workflow_modes must not repeat a mode")
        return modes

    def requests(self) -> list[TranslationRequest]:
        return [
            TranslationRequest(
                original_text=self.original_text,
                source_language=self.source_language,
                target_language=self.target_language,
                workflow_mode=mode,
                metadata=self.metadata,
            )
            for mode in self.workflow_modes
        ]


class BreakerInfo(BaseModel):
    name: str
    state: str
    consecutive_failures: int
    retry_at: float | None


class IntegrationStatus(BaseModel):
    """How translation jobs are set up, and how they are doing."""

    configured: bool
    problems: list[str]
    """What to configure before jobs can run (empty when configured)."""
    workflow: str
    """``built-in``, ``vpsweb`` (translation.workflow) or the injected workflow factory."""
    provider: str | None
    base_url: str | None
    api_key_env: str | None
    api_key_set: bool
    models: dict[str, dict[str, str | None]]
    """Model by workflow mode and step."""
    timeout_seconds: float | None
    breakers: list[BreakerInfo]
    jobs: dict[str, int]
    """Translation jobs by status."""
    workers_enabled: bool


class ProviderHealth(BaseModel):
    """A live check of the provider (``GET {base_url}/models``), bounded in time."""

    status: Literal["healthy", "degraded", "unhealthy", "not_configured", "unchecked"]
    """``unchecked``: jobs run a custom workflow (VPSWeb's) with no provider configured
    here, so there is nothing to call; storage was checked."""
    provider: str | None
    base_url: str | None
    reachable: bool
    latency_ms: float | None
    models_available: list[str] | None
    models_missing: list[str]
    """Configured models the provider does not list."""
    breaker_state: str | None
    storage_ok: bool
    queue_paused: bool
    error: str | None
    problems: list[str]
    checked_at: datetime


def _now_utc() -> datetime:
    return datetime.now(UTC)


class _Reporter:
    """VPSWeb's ``progress_callback(step_name, details)`` -> the task's progress, with the
    step in the metadata (the SSE stream turns these into step_start / step_complete)."""

    def __init__(self, context: TaskContext) -> None:
        self.context = context

    async def __call__(self, step_name: str, details: dict[str, Any]) -> None:
        step = details.get("step")
        if step not in STEPS:
            step = next((key for key, name in STEP_NAMES.items() if name == step_name), None)
        index = STEPS.index(step) if step is not None else None
        status = details.get("status")
        event = {"running": "step_start", "completed": "step_complete"}.get(
            str(status), "step_failed" if status == "failed" else "step_progress"
        )
        progress = self.context.progress
        if index is not None:
            progress = (index + (1 if event == "step_complete" else 0)) / len(STEPS)
        safe = json.loads(json.dumps(details, default=str))
        await self.context.update_progress(
            progress,
            f"{step_name}: {status}",
            {"event": event, "step": step, "step_name": step_name, "details": safe},
        )


class VPSWebAdapter:
    """Translation jobs on a :class:`~vpsweb_tasks.manager.TaskManager`. See the module
    docstring. ``transport`` is handed to the httpx client of provider calls (tests,
    proxies)."""

    def __init__(
        self,
        manager: TaskManager,
        *,
        workflow_factory: WorkflowFactory | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.manager = manager
        self.settings = manager.settings.translation
        self.workflow_factory = workflow_factory
        self._transport = transport
        self._ssl: ssl.SSLContext | None = None
        manager.register(TASK_TYPE, self._run)
        _adapters[manager] = self

    async def _http(self, timeout: float) -> httpx.AsyncClient:
        """An httpx client for provider calls. Loading the CA bundle costs ~50 ms of CPU:
        done once per adapter, in a worker thread, not once per job on the event loop."""
        if self._ssl is None:
            self._ssl = await anyio.to_thread.run_sync(httpx.create_ssl_context)
        return httpx.AsyncClient(timeout=timeout, transport=self._transport, verify=self._ssl)

    # --- configuration -----------------------------------------------------------------

    def _provider_entry(self) -> tuple[str | None, ProviderSettings | None, list[str]]:
        """The provider jobs call (its name and settings), or what is wrong."""
        providers = self.manager.settings.providers
        name = self.settings.provider
        if name is not None and name in providers:
            return name, providers[name], []
        if name is not None:
            known = ", ".join(sorted(providers)) or "none"
            problem = (
                f"translation.provider is {name!r} but providers has no such entry"
                f" (configured: {known})"
            )
        elif not providers:
            problem = (
                "no LLM provider: set providers.<name>.base_url (any OpenAI-compatible"
                " server, e.g. http://127.0.0.1:11434/v1 for Ollama) and"
                " providers.<name>.models (a model per workflow mode)"
            )
        elif len(providers) > 1:
            problem = (
                f"several providers ({', '.join(sorted(providers))}): set translation.provider"
            )
        else:
            (only,) = providers
            return only, providers[only], []
        return name, None, [problem]

    def _factory(self) -> WorkflowFactory | None:
        """The injected workflow factory, VPSWeb's (``translation.workflow: vpsweb``), or
        None for the built-in workflow."""
        if self.workflow_factory is not None:
            return self.workflow_factory
        if self.settings.workflow == "vpsweb":
            factory: WorkflowFactory = vpsweb_workflow_factory()
            return factory
        return None

    def problems(self, modes: Iterable[WorkflowMode] = tuple(WorkflowMode)) -> list[str]:
        """What stops jobs of these modes from running (empty: nothing)."""
        try:
            if self._factory() is not None:
                return []
        except TranslationNotConfiguredError as exc:
            return exc.problems
        name, provider, problems = self._provider_entry()
        if provider is None:
            return problems
        key = f"providers.{name}"
        if not provider.base_url:
            problems.append(f"{key}.base_url is not set")
        for mode in modes:
            missing = [step for step in STEPS if provider.model_for(mode.value, step) is None]
            if missing:
                problems.append(
                    f"{key}.models has no model for workflow mode {mode.value}"
                    f" (set {key}.models.{mode.value} or models.default)"
                )
        if provider.api_key_env and provider.api_key() is None:
            problems.append(
                f"environment variable {provider.api_key_env} ({key}.api_key_env) is not set"
            )
        return problems

    def require_configured(self, modes: Iterable[WorkflowMode]) -> None:
        """Raise :class:`TranslationNotConfiguredError` listing what to configure."""
        problems = self.problems(modes)
        if problems:
            raise TranslationNotConfiguredError(problems)

    # --- submit --------------------------------------------------------------------------

    @staticmethod
    def _request(request: TranslationRequest | Mapping[str, Any]) -> TranslationRequest:
        if isinstance(request, TranslationRequest):
            return request
        return TranslationRequest.model_validate(request)

    async def submit(self, request: TranslationRequest | Mapping[str, Any]) -> TranslationJob:
        """Validate and store a job; it runs in the background. Raises pydantic's
        ``ValidationError`` (naming the field), :class:`TranslationNotConfiguredError`,
        ``QueueFullError`` or ``ManagerNotRunningError``."""
        request = self._request(request)
        self.require_configured([request.workflow_mode])
        return await self._submit(request)

    def _definition(self, request: TranslationRequest) -> TaskDefinition:
        title = request.metadata.title or " ".join(request.original_text.split())[:40]
        return TaskDefinition(
            name=f"Translation ({request.workflow_mode.value}): {title}"[:200],
            task_type=TASK_TYPE,
            priority=request.priority,
            max_retries=self.settings.max_retries,
            metadata={
                "source_language": request.source_language,
                "target_language": request.target_language,
                "workflow_mode": request.workflow_mode.value,
            },
        )

    @staticmethod
    def _new_job(task: NewTask, request: TranslationRequest) -> NewTranslationJob:
        return NewTranslationJob(
            id=task.id,
            source_language=request.source_language,
            target_language=request.target_language,
            workflow_mode=request.workflow_mode.value,
            original_text=request.original_text,
            metadata=request.metadata.model_dump(mode="json", exclude_none=True),
        )

    async def _submit(self, request: TranslationRequest) -> TranslationJob:
        stored: list[TranslationJobRow] = []

        async def insert(task: NewTask, max_queue_size: int | None) -> TaskRecord:
            row = await self.manager.store.add_translation_job(
                task, self._new_job(task, request), max_queue_size=max_queue_size
            )
            stored.append(row)
            return row.task

        await self.manager.submit_linked(self._definition(request), insert, TASK_TYPE)
        return _job(stored[0])

    async def batch(
        self, requests: TranslationBatch | Iterable[TranslationRequest | Mapping[str, Any]]
    ) -> list[TranslationJob]:
        """Submit several jobs, all or none: every request is validated (errors name
        ``requests.<i>.<field>``), then every job and its task are stored in one
        transaction that also checks that the queue has room for all of them
        (``QueueFullError`` otherwise): a refused batch leaves nothing behind."""
        if not isinstance(requests, TranslationBatch):
            requests = TranslationBatch.model_validate({"requests": list(requests)})
        items = requests.requests
        if len(items) > self.settings.max_batch_size:
            raise ValueError(
                f"a batch holds at most {self.settings.max_batch_size} requests"
                f" (translation.max_batch_size), not {len(items)}"
            )
        self.require_configured({item.workflow_mode for item in items})
        return await self._submit_all(items)

    async def _submit_all(self, items: list[TranslationRequest]) -> list[TranslationJob]:
        """Store the jobs of ``items`` all together (one store transaction) or none."""
        stored: list[TranslationJobRow] = []

        async def insert(tasks: Sequence[NewTask], limit: int | None) -> list[TaskRecord]:
            jobs = [
                (task, self._new_job(task, item)) for task, item in zip(tasks, items, strict=True)
            ]
            rows = await self.manager.store.add_translation_jobs(jobs, max_queue_size=limit)
            stored.extend(rows)
            return [row.task for row in rows]

        definitions = [self._definition(item) for item in items]
        await self.manager.submit_linked_batch(definitions, insert, TASK_TYPE)
        return [_job(row) for row in stored]

    async def compare(self, request: CompareRequest | Mapping[str, Any]) -> Comparison:
        """Run one text through several workflow modes; with ``wait``, answer once all
        have finished (or ``timeout`` passed), with the results side by side."""
        if not isinstance(request, CompareRequest):
            request = CompareRequest.model_validate(request)
        items = request.requests()
        self.require_configured(request.workflow_modes)
        jobs = await self._submit_all(items)
        ids = [job.job_id for job in jobs]
        if request.wait:
            with anyio.move_on_after(request.timeout):
                for job_id in ids:
                    await self.manager.wait(job_id)
        return await self.comparison(ids)

    # --- read ----------------------------------------------------------------------------

    async def _row(self, job_id: str) -> TranslationJobRow:
        row = await self.manager.store.get_translation_job(job_id)
        if row is None:
            raise TranslationJobNotFoundError(job_id)
        return row

    async def status(self, job_id: str) -> TranslationJob:
        """The job's state; raises :class:`TranslationJobNotFoundError`."""
        return _job(await self._row(job_id))

    async def list_jobs(
        self, *, statuses: Iterable[TaskStatus] | None = None, limit: int = 100, offset: int = 0
    ) -> list[TranslationJob]:
        rows = await self.manager.store.list_translation_jobs(
            statuses=None if statuses is None else list(statuses), limit=limit, offset=offset
        )
        return [_job(row) for row in rows]

    async def result(self, job_id: str) -> TranslationResult:
        """The finished job's result; ``TaskStateError`` (409) until it has completed."""
        row = await self._row(job_id)
        if row.task.status is not TaskStatus.COMPLETED or row.result is None:
            raise TaskStateError(job_id, row.task.status.value, "read the result of")
        return TranslationResult.model_validate(row.result)

    async def comparison(self, job_ids: Iterable[str]) -> Comparison:
        """The jobs of a comparison, side by side, in the order given."""
        rows = [await self._row(job_id) for job_id in job_ids]
        if not rows:
            raise ValueError("a comparison needs at least one job id")
        entries = []
        for row in rows:
            entry = ComparisonEntry(
                workflow_mode=WorkflowMode(row.workflow_mode),
                job_id=row.id,
                status=row.task.status,
                error_message=row.task.error_message,
            )
            if row.result is not None and row.task.status is TaskStatus.COMPLETED:
                result = TranslationResult.model_validate(row.result)
                entry = entry.model_copy(
                    update={
                        "final_translation": result.final_translation,
                        "models_used": result.models_used,
                        "token_usage": result.token_usage,
                        "duration_seconds": result.duration_seconds,
                    }
                )
            entries.append(entry)
        first = rows[0]
        return Comparison(
            original_text=first.original_text,
            source_language=first.source_language,
            target_language=first.target_language,
            entries=entries,
            complete=all(row.task.status.is_terminal for row in rows),
        )

    # --- control -------------------------------------------------------------------------

    async def retry(self, job_id: str) -> TranslationJob:
        """Run a failed job again; it resumes at its first unfinished step. Raises
        ``TaskStateError`` (409) unless the job has failed."""
        row = await self._row(job_id)
        if row.task.status is not TaskStatus.FAILED:
            raise TaskStateError(job_id, row.task.status.value, "retry")
        await self.manager.requeue(row.task_id)
        return await self.status(job_id)

    async def cancel(self, job_id: str) -> TranslationJob:
        """Cancel a waiting or running job (the call in flight is abandoned). Raises
        ``TaskStateError`` (409) for a finished job."""
        row = await self._row(job_id)
        await self.manager.cancel(row.task_id)
        return await self.status(job_id)

    # --- status and health -------------------------------------------------------------

    def _breakers(self) -> list[BreakerInfo]:
        return [
            BreakerInfo(
                name=stats.name,
                state=stats.state.value,
                consecutive_failures=stats.consecutive_failures,
                retry_at=stats.retry_at,
            )
            for name, stats in sorted(self.manager.breakers.statistics().items())
            if name.startswith("llm:")
        ]

    def _workflow_name(self) -> str:
        if self.workflow_factory is not None:
            return getattr(self.workflow_factory, "__qualname__", repr(self.workflow_factory))
        return "vpsweb" if self.settings.workflow == "vpsweb" else "built-in"

    async def integration_status(self) -> IntegrationStatus:
        """Configuration, breaker states and job counts (``vpsweb/status``)."""
        name, provider, _ = self._provider_entry()
        counts = (await self.manager.store.count_tasks_by_type()).get(TASK_TYPE, {})
        models: dict[str, dict[str, str | None]] = {}
        if provider is not None:
            models = {
                mode.value: {step: provider.model_for(mode.value, step) for step in STEPS}
                for mode in WorkflowMode
            }
        problems = self.problems()
        usable_modes = [mode for mode in WorkflowMode if not self.problems([mode])]
        return IntegrationStatus(
            configured=bool(usable_modes),
            problems=problems,
            workflow=self._workflow_name(),
            provider=name,
            base_url=provider.base_url if provider else None,
            api_key_env=provider.api_key_env if provider else None,
            api_key_set=bool(provider and provider.api_key()),
            models=models,
            timeout_seconds=provider.timeout if provider else None,
            breakers=self._breakers(),
            jobs={status.value: counts.get(status, 0) for status in TaskStatus},
            workers_enabled=self.manager.config.enabled,
        )

    async def health(self) -> ProviderHealth:
        """A live check of the provider, at most ``translation.health_check_timeout``
        long: it lists the provider's models (not counted by the breaker)."""
        name, provider, problems = self._provider_entry()
        problems = self.problems()
        storage_ok = True
        try:
            with anyio.fail_after(self.settings.health_check_timeout):
                await self.manager.store.ping()
        except Exception:
            storage_ok = False
        paused = self.manager.queue.paused
        if provider is None or not provider.base_url:
            custom = not problems and self._factory() is not None
            return ProviderHealth(
                status="unchecked" if custom and storage_ok else "not_configured",
                provider=name,
                base_url=None,
                reachable=False,
                latency_ms=None,
                models_available=None,
                models_missing=[],
                breaker_state=None,
                storage_ok=storage_ok,
                queue_paused=paused,
                error=None,
                problems=problems,
                checked_at=_now_utc(),
            )
        assert name is not None
        breaker_state = None
        if breaker_name(name) in self.manager.breakers:
            breaker_state = self.manager.breakers.get(breaker_name(name)).state.value
        wanted = sorted({model for model in provider.models.values()})
        error: str | None = None
        available: list[str] | None = None
        latency: float | None = None
        key = provider.api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        started = time.perf_counter()
        with anyio.move_on_after(self.settings.health_check_timeout) as deadline:
            try:
                async with await self._http(self.settings.health_check_timeout) as http:
                    response = await http.get(
                        provider.base_url.rstrip("/") + "/models", headers=headers
                    )
                latency = (time.perf_counter() - started) * 1000
                if response.status_code >= 400:
                    error = f"GET /models answered HTTP {response.status_code}"
                else:
                    available = _model_ids(response)
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
        if deadline.cancelled_caught:
            error = f"no answer within {self.settings.health_check_timeout:g}s"
        missing = [m for m in wanted if available is not None and m not in available]
        if error is not None or not storage_ok:
            status: Literal["healthy", "degraded", "unhealthy"] = "unhealthy"
        elif missing or problems or breaker_state not in (None, "closed"):
            status = "degraded"
        else:
            status = "healthy"
        return ProviderHealth(
            status=status,
            provider=name,
            base_url=provider.base_url,
            reachable=error is None,
            latency_ms=latency,
            models_available=available,
            models_missing=missing,
            breaker_state=breaker_state,
            storage_ok=storage_ok,
            queue_paused=paused,
            error=error,
            problems=problems,
            checked_at=_now_utc(),
        )

    # --- the task ------------------------------------------------------------------------

    def _input(self, row: TranslationJobRow) -> TranslationInput:
        return TranslationInput(
            original_poem=row.original_text,
            source_lang=row.source_language,
            target_lang=row.target_language,
            workflow_mode=WorkflowMode(row.workflow_mode),
            metadata=row.metadata,
        )

    async def _run(self, context: TaskContext) -> dict[str, Any]:
        row = await self.manager.store.get_translation_job(context.task_id)
        if row is None:
            raise ValueError(f"task {context.task_id} has no translation_jobs row")
        input = self._input(row)
        async with AsyncExitStack() as stack:
            workflow = await self._workflow(row, context, stack)
            workflow.progress_callback = _Reporter(context)
            try:
                output = await workflow.execute(input)
            except anyio.get_cancelled_exc_class():
                workflow.cancel()  # a custom workflow may have work outside our scope
                raise
        if output is None:
            raise ValueError("the workflow returned no output: it was cancelled from outside")
        result = self._result(row, output)
        await self.manager.store.save_translation_result(
            row.id, result.model_dump(mode="json"), now=self.manager.clock()
        )
        await context.update_progress(1.0, "translation completed")
        return {
            "job_id": row.id,
            "final_translation": result.final_translation,
            "token_usage": result.token_usage.model_dump(),
            "steps": [step.step for step in result.steps],
        }

    async def _workflow(
        self, row: TranslationJobRow, context: TaskContext, stack: AsyncExitStack
    ) -> TranslationWorkflow:
        factory = self._factory()
        if factory is not None:
            return factory(self._input(row))
        self.require_configured([WorkflowMode(row.workflow_mode)])
        name, provider, _ = self._provider_entry()
        assert name is not None
        assert provider is not None
        assert provider.base_url
        http = await stack.enter_async_context(await self._http(provider.timeout))
        client = ChatClient(
            http,
            provider=name,
            base_url=provider.base_url,
            api_key=provider.api_key(),
            breaker=self.manager.breakers.get(breaker_name(name)),
            timeout=provider.timeout,
        )
        store = self.manager.store

        async def checkpoint(step: StepCheckpoint) -> None:
            await store.save_translation_step(
                row.id, step.step, step.model_dump(mode="json"), now=self.manager.clock()
            )

        return LLMTranslationWorkflow(
            client=client,
            provider=provider,
            settings=self.settings,
            completed={
                key: StepCheckpoint.model_validate(value) for key, value in row.steps.items()
            },
            checkpoint=checkpoint,
            attempt=context.attempt,
            clock=self.manager.clock,
        )

    def _result(self, row: TranslationJobRow, output: Any) -> TranslationResult:
        common: dict[str, Any] = {
            "job_id": row.id,
            "status": TaskStatus.COMPLETED,
            "source_language": row.source_language,
            "target_language": row.target_language,
            "workflow_mode": WorkflowMode(row.workflow_mode),
            "original_text": row.original_text,
            "metadata": row.metadata,
        }
        if isinstance(output, TranslationOutput):
            total = TokenUsage()
            for step in output.steps:
                total = total + step.tokens
            return TranslationResult(
                **common,
                final_translation=output.final_translation,
                steps=output.steps,
                models_used={step.step: step.model for step in output.steps},
                token_usage=total,
                duration_seconds=sum(step.duration_seconds for step in output.steps),
            )
        dumped = _dump(output)
        return TranslationResult(
            **common,
            final_translation=_final_translation(dumped),
            steps=[],
            models_used={},
            token_usage=TokenUsage(),
            duration_seconds=0.0,
            workflow_output=dumped,
        )


def _job(row: TranslationJobRow) -> TranslationJob:
    task = row.task
    done = [step for step in STEPS if step in row.steps]
    current = None
    if task.status is not TaskStatus.COMPLETED:
        current = next((step for step in STEPS if step not in row.steps), None)
    return TranslationJob(
        job_id=row.id,
        task_id=task.id,
        status=task.status,
        progress=task.progress,
        message=task.message,
        current_step=current,
        steps_completed=done,
        steps=[StepCheckpoint.model_validate(row.steps[step]) for step in done],
        source_language=row.source_language,
        target_language=row.target_language,
        workflow_mode=WorkflowMode(row.workflow_mode),
        metadata=row.metadata,
        attempts=task.attempts,
        error_message=task.error_message,
        error_category=task.error_category,
        created_at=task.created_at,
        updated_at=datetime.fromtimestamp(max(row.updated_at, task.updated_at.timestamp()), UTC),
        started_at=task.started_at,
        finished_at=task.finished_at,
        result_available=task.status is TaskStatus.COMPLETED and row.result is not None,
    )


def _model_ids(response: httpx.Response) -> list[str] | None:
    try:
        data = response.json()
        return sorted(str(item["id"]) for item in data["data"])
    except (ValueError, KeyError, TypeError):
        return None


def _dump(output: Any) -> dict[str, Any]:
    if hasattr(output, "model_dump"):
        value = output.model_dump(mode="json")
    elif isinstance(output, Mapping):
        value = dict(output)
    else:
        value = dict(vars(output)) if hasattr(output, "__dict__") else {"output": output}
    dumped: dict[str, Any] = json.loads(json.dumps(value, default=str))
    return dumped


def _final_translation(output: Mapping[str, Any]) -> str | None:
    """VPSWeb's output keeps the revised translation under ``revised_translation``."""
    for key in ("final_translation", "revised_translation", "translation"):
        value = output.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, Mapping):
            found = _final_translation(value)
            if found is not None:
                return found
    return None
