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

    manager = TaskManager(settings, extensions=[TranslationExtension()])
    adapter = get_vpsweb_adapter(manager)
    job = await adapter.submit({"original_text": "...", "source_language": "en",
                                "target_language": "zh-Hans", "workflow_mode": "hybrid"})
    await manager.wait(job.job_id)
    result = await adapter.result(job.job_id)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import anyio
import httpx

from ..errors import TaskStateError
from ..models import TaskDefinition, TaskStatus
from ..storage import logic
from ..storage.types import NewTask
from . import store as jobs
from .client import breaker_name
from .errors import TranslationJobNotFoundError
from .handler import JobRunner, provider_limit_name
from .models import (
    STEPS,
    BreakerInfo,
    CompareRequest,
    Comparison,
    ComparisonEntry,
    IntegrationStatus,
    ProviderHealth,
    StepCheckpoint,
    StepState,
    TokenUsage,
    TranslationBatch,
    TranslationJob,
    TranslationRequest,
    TranslationResult,
    UsageSummary,
    WorkflowMode,
)
from .pricing import total_cost
from .providers import HttpClients, Setup, WorkflowFactory, probe
from .settings import Providers, TranslationSettings
from .store import NewTranslationJob, TranslationJobRow

if TYPE_CHECKING:
    from ..manager import TaskManager

__all__ = ["TASK_TYPE", "VPSWebAdapter", "step_states"]

TASK_TYPE = "translation"


def _now_utc() -> datetime:
    return datetime.now(UTC)


class _HoldsAdapter(Protocol):
    adapter: VPSWebAdapter | None


class VPSWebAdapter:
    """Translation jobs on a :class:`~vpsweb_tasks.manager.TaskManager` with the
    translation extension installed (which makes one; constructing another, e.g. with
    VPSWeb's own ``workflow_factory``, replaces it). ``transport`` is handed to the httpx
    client of provider calls (tests, proxies)."""

    def __init__(
        self,
        manager: TaskManager,
        *,
        workflow_factory: WorkflowFactory | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        # The installed extension holds the manager's adapter (KeyError if not installed).
        extension = cast(_HoldsAdapter, manager.extension(TASK_TYPE))
        self.manager = manager
        self.settings = manager.settings.section("translation", TranslationSettings)
        providers = manager.settings.section("providers", Providers).root
        self.setup = Setup(providers, self.settings, workflow_factory)
        for name, provider in providers.items():
            if provider.rate_limit is not None:
                manager.add_rate_limit(provider_limit_name(name), provider.rate_limit)
        self.workflow_factory = workflow_factory
        self._clients = HttpClients(transport)
        manager.register(
            TASK_TYPE,
            JobRunner(
                store=manager.store,
                clock=manager.clock,
                breakers=manager.breakers,
                setup=self.setup,
                clients=self._clients,
            ),
        )
        extension.adapter = self

    # --- configuration -----------------------------------------------------------------

    def problems(self, modes: Iterable[WorkflowMode] = tuple(WorkflowMode)) -> list[str]:
        """What stops jobs of these modes from running (empty: nothing)."""
        return self.setup.problems(modes)

    def require_configured(self, modes: Iterable[WorkflowMode]) -> None:
        """Raise :class:`TranslationNotConfiguredError` listing what to configure."""
        self.setup.require(modes)

    # --- submit --------------------------------------------------------------------------

    @staticmethod
    def _request(request: TranslationRequest | Mapping[str, Any]) -> TranslationRequest:
        if isinstance(request, TranslationRequest):
            return request
        return TranslationRequest.model_validate(request)

    async def submit(
        self,
        request: TranslationRequest | Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> TranslationJob:
        """Validate and store a job; it runs in the background. Raises pydantic's
        ``ValidationError`` (naming the field), :class:`TranslationNotConfiguredError`,
        ``QueueFullError`` or ``ManagerNotRunningError``. With an ``idempotency_key``
        already held by the same request, the first job (``replayed``); by another
        request, ``IdempotencyKeyError``."""
        request = self._request(request)
        self.require_configured([request.workflow_mode])
        (job,) = await self._submit_all([request], idempotency_key)
        return job

    def _definition(self, request: TranslationRequest) -> TaskDefinition:
        title = request.metadata.title or " ".join(request.original_text.split())[:40]
        caps = [c for c in (request.max_cost, self.settings.max_cost_per_job) if c is not None]
        return TaskDefinition(
            name=f"Translation ({request.workflow_mode.value}): {title}"[:200],
            task_type=TASK_TYPE,
            priority=request.priority,
            max_retries=self.settings.max_retries,
            metadata={
                "source_language": request.source_language,
                "target_language": request.target_language,
                "workflow_mode": request.workflow_mode.value,
                # The job's cost cap, as it was when accepted (the lower of the two).
                **({"max_cost": min(caps)} if caps else {}),
            },
            # The submitter's jobs share the workers fairly with other submitters' and
            # are bounded by background_tasks.max_running_per_key.
            concurrency_key=None if request.user is None else f"user:{request.user}",
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

    async def batch(
        self,
        requests: TranslationBatch | Iterable[TranslationRequest | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> list[TranslationJob]:
        """Submit several jobs, all or none: every request is validated (errors name
        ``requests.<i>.<field>``), then every job and its task are stored in one
        transaction that also checks that the queue has room for all of them
        (``QueueFullError`` otherwise): a refused batch leaves nothing behind. One
        ``idempotency_key`` for the batch, as for :meth:`submit`."""
        if not isinstance(requests, TranslationBatch):
            requests = TranslationBatch.model_validate({"requests": list(requests)})
        items = requests.requests
        if len(items) > self.settings.max_batch_size:
            raise ValueError(
                f"a batch holds at most {self.settings.max_batch_size} requests"
                f" (translation.max_batch_size), not {len(items)}"
            )
        self.require_configured({item.workflow_mode for item in items})
        return await self._submit_all(items, idempotency_key)

    async def _submit_all(
        self, items: list[TranslationRequest], idempotency_key: str | None = None
    ) -> list[TranslationJob]:
        """Store the jobs of ``items`` all together (one transaction) or none; under an
        idempotency key held by the same request, the jobs it holds (``replayed``)."""
        made: list[tuple[NewTask, NewTranslationJob]] = []

        def linked(tasks: Sequence[NewTask]) -> list[Any]:
            made.extend(
                (task, self._new_job(task, item)) for task, item in zip(tasks, items, strict=True)
            )
            return [jobs.insert_jobs(made)]

        definitions = [self._definition(item) for item in items]
        contexts = await self.manager.submit_batch(
            definitions,
            TASK_TYPE,
            linked=linked,
            idempotency_key=idempotency_key,
            # A request without a user is fingerprinted as before the field existed.
            idempotency_request=[
                item.model_dump(mode="json", exclude={"user"} if item.user is None else None)
                for item in items
            ],
        )
        if contexts and contexts[0].replayed:
            jobs_found = [await self.status(context.task_id) for context in contexts]
            return [job.model_copy(update={"replayed": True}) for job in jobs_found]
        return [_job(job.row(task)) for task, job in made]

    async def compare(self, request: CompareRequest | Mapping[str, Any]) -> Comparison:
        """Run one text through several workflow modes; with ``wait``, answer once all
        have finished (or ``timeout`` passed), with the results side by side."""
        if not isinstance(request, CompareRequest):
            request = CompareRequest.model_validate(request)
        items = request.requests()
        self.require_configured(request.workflow_modes)
        submitted = await self._submit_all(items)
        ids = [job.job_id for job in submitted]
        if request.wait:
            with anyio.move_on_after(request.timeout):
                for job_id in ids:
                    await self.manager.wait(job_id)
        return await self.comparison(ids)

    # --- read ----------------------------------------------------------------------------

    async def _row(self, job_id: str) -> TranslationJobRow:
        row = await self.manager.store.run(jobs.get_job(job_id))
        if row is None:
            raise TranslationJobNotFoundError(job_id)
        return row

    async def status(self, job_id: str) -> TranslationJob:
        """The job's state; raises :class:`TranslationJobNotFoundError`."""
        return _job(await self._row(job_id))

    async def list_jobs(
        self, *, statuses: Iterable[TaskStatus] | None = None, limit: int = 100, offset: int = 0
    ) -> list[TranslationJob]:
        rows = await self.manager.store.run(
            jobs.list_jobs(
                statuses=None if statuses is None else list(statuses), limit=limit, offset=offset
            )
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
                        "cost": result.cost,
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
        """Cancel a waiting or running job (the call in flight is abandoned). The job
        returned is ``cancelled``, or still ``running`` with ``cancel_requested`` while
        the worker that runs it (another process) stops it (see
        :meth:`~vpsweb_tasks.manager.TaskManager.cancel`). Raises ``TaskStateError``
        (409) for a finished job."""
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

    async def integration_status(self) -> IntegrationStatus:
        """Configuration, breaker states and job counts (``vpsweb/status``)."""
        name, provider, _ = self.setup.provider()
        counts = (await self.manager.store.run(logic.count_tasks_by_type())).get(TASK_TYPE, {})
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
            workflow=self.setup.workflow_name,
            provider=name,
            base_url=provider.base_url if provider else None,
            api_key_env=provider.api_key_env if provider else None,
            api_key_set=bool(provider and provider.api_key()),
            models=models,
            timeout_seconds=provider.timeout if provider else None,
            breakers=self._breakers(),
            jobs={status.value: counts.get(status, 0) for status in TaskStatus},
            workers_enabled=self.manager.config.enabled,
            usage=await self.usage(),
        )

    async def usage(self, window_seconds: float | None = None) -> UsageSummary:
        """Tokens and cost of the steps that finished in the last ``window_seconds``
        (default: ``task_monitoring.statistics_window``), by model and in all."""
        window = window_seconds or self.manager.settings.task_monitoring.statistics_window
        since = self.manager.clock() - window
        by_model = await self.manager.store.run(jobs.usage_by_model(since=since))
        by_key = await self.manager.store.run(jobs.usage_by_key(since=since))
        costs = [each.cost for each in by_model if each.cost is not None]
        return UsageSummary(
            window_seconds=window,
            currency=self.settings.currency,
            prompt_tokens=sum(each.prompt_tokens for each in by_model),
            completion_tokens=sum(each.completion_tokens for each in by_model),
            cost=sum(costs) if costs else None,
            by_model=by_model,
            by_key=by_key,
        )

    async def health(self) -> ProviderHealth:
        """A live check of the provider, at most ``translation.health_check_timeout``
        long: it lists the provider's models (not counted by the breaker)."""
        timeout = self.settings.health_check_timeout
        name, provider, _ = self.setup.provider()
        problems = self.problems()
        storage_ok = True
        try:
            with anyio.fail_after(timeout):
                await self.manager.store.run(logic.ping())
        except Exception:
            storage_ok = False
        paused = self.manager.queue.paused
        if provider is None or not provider.base_url:
            custom = not problems and self.setup.factory() is not None
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
        found = await probe(self._clients, provider, timeout)
        available = found.models
        missing = [m for m in wanted if available is not None and m not in available]
        if found.error is not None or not storage_ok:
            status: Literal["healthy", "degraded", "unhealthy"] = "unhealthy"
        elif missing or problems or breaker_state not in (None, "closed"):
            status = "degraded"
        else:
            status = "healthy"
        return ProviderHealth(
            status=status,
            provider=name,
            base_url=provider.base_url,
            reachable=found.error is None,
            latency_ms=found.latency_ms,
            models_available=available,
            models_missing=missing,
            breaker_state=breaker_state,
            storage_ok=storage_ok,
            queue_paused=paused,
            error=found.error,
            problems=problems,
            checked_at=_now_utc(),
        )


def step_states(row: TranslationJobRow) -> dict[str, StepState]:
    """Each step's state, from its checkpoint (built-in workflow) or from what the
    workflow's progress callback reported in the task's current attempt (any workflow)."""
    task = row.task
    states: dict[str, StepState] = {}
    for step in STEPS:
        report = row.step_states.get(step)
        state: StepState = "waiting"
        if step in row.steps or task.status is TaskStatus.COMPLETED:
            state = "completed"
        elif report is not None and report.get("attempt") == task.attempts:
            reported = report.get("state")
            if reported in ("completed", "failed"):
                state = reported
            elif reported == "running":
                if task.status is TaskStatus.RUNNING:
                    state = "running"
                elif task.status in (TaskStatus.RETRYING, TaskStatus.FAILED):
                    state = "failed"  # the attempt ended while the step ran
        states[step] = state
    return states


def _job(row: TranslationJobRow) -> TranslationJob:
    task = row.task
    states = step_states(row)
    done = [step for step in STEPS if states[step] == "completed"]
    steps = [StepCheckpoint.model_validate(row.steps[step]) for step in STEPS if step in row.steps]
    current = None
    if task.status is not TaskStatus.COMPLETED:
        running = [step for step in STEPS if states[step] == "running"]
        current = running[0] if running else next((s for s in STEPS if s not in done), None)
    return TranslationJob(
        job_id=row.id,
        task_id=task.id,
        status=task.status,
        cancel_requested=task.cancel_requested,
        progress=task.progress,
        message=task.message,
        current_step=current,
        steps_completed=done,
        step_states=states,
        steps=steps,
        token_usage=sum((step.tokens for step in steps), TokenUsage()),
        cost=total_cost(steps),
        max_cost=task.metadata.get("max_cost"),
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
