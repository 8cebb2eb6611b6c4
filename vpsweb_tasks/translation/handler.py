"""The translation task: one job, run by a workflow under the task's cancel scope.

It reads the job, runs the workflow (the built-in one against the configured provider,
or an injected one such as VPSWeb's), reports each step as progress, checkpoints each
finished step (the built-in workflow), and stores the result with the task's completion:
both are committed together, or neither.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from typing import Any

import anyio

from ..breakers import BreakerRegistry
from ..context import TaskContext
from ..models import TaskStatus
from ..storage.base import TaskStore
from . import store as jobs
from .client import ChatClient, breaker_name
from .models import (
    STEP_NAMES,
    STEPS,
    StepCheckpoint,
    TokenUsage,
    TranslationInput,
    TranslationOutput,
    TranslationResult,
    WorkflowMode,
)
from .pricing import total_cost
from .providers import HttpClients, Setup
from .store import TranslationJobRow
from .workflow import LLMTranslationWorkflow, TranslationWorkflow

__all__ = ["JobRunner"]


class _Reporter:
    """VPSWeb's ``progress_callback(step_name, details)`` -> the job's step states (stored
    first, so that whoever hears of the progress reads them) and the task's progress, with
    the step in the metadata (the SSE streams turn these into step_start /
    step_complete)."""

    def __init__(
        self, context: TaskContext, store: TaskStore, job_id: str, clock: Callable[[], float]
    ) -> None:
        self.context = context
        self.store = store
        self.job_id = job_id
        self.clock = clock

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
        if step is not None and status in _STATES:
            await self.store.run(
                jobs.report_step(
                    self.job_id,
                    step,
                    str(status),
                    attempt=self.context.attempt,
                    now=self.clock(),
                )
            )
        safe = json.loads(json.dumps(details, default=str))
        await self.context.update_progress(
            progress,
            f"{step_name}: {status}",
            {"event": event, "step": step, "step_name": step_name, "details": safe},
        )


#: The reported statuses that change a step's state.
_STATES = frozenset({"running", "completed", "failed"})


class _ProviderLimit:
    """A provider's shared rate limit (``llm:<provider>``, a key per model), taken through
    the running task's context."""

    def __init__(self, context: TaskContext, provider: str) -> None:
        self.context = context
        self.template = f"{provider_limit_name(provider)}:{{model}}"

    async def acquire(self, model: str) -> None:
        await self.context.acquire_rate(self.template, model=model)

    async def report(self, model: str, tokens: int) -> None:
        await self.context.report_tokens(tokens, self.template, model=model)


def provider_limit_name(provider: str) -> str:
    """The rate limit of a provider's calls: ``llm:<provider>``."""
    return f"llm:{provider}"


class JobRunner:
    """The task function of type ``translation``."""

    def __init__(
        self,
        *,
        store: TaskStore,
        clock: Callable[[], float],
        breakers: BreakerRegistry,
        setup: Setup,
        clients: HttpClients,
    ) -> None:
        self.store = store
        self.clock = clock
        self.breakers = breakers
        self.setup = setup
        self.clients = clients

    async def __call__(self, context: TaskContext) -> dict[str, Any]:
        row = await self.store.run(jobs.get_job(context.task_id))
        if row is None:
            raise ValueError(f"task {context.task_id} has no translation_jobs row")
        input = _input(row)
        async with AsyncExitStack() as stack:
            workflow = await self._workflow(row, context, stack)
            workflow.progress_callback = _Reporter(context, self.store, row.id, self.clock)
            try:
                output = await workflow.execute(input)
            except anyio.get_cancelled_exc_class():
                workflow.cancel()  # a custom workflow may have work outside our scope
                raise
        if output is None:
            raise ValueError("the workflow returned no output: it was cancelled from outside")
        result = self._result(row, output)
        context.write_on_completion(
            jobs.result_step(row.id, result.model_dump(mode="json"), now=self.clock())
        )
        await context.update_progress(1.0, "translation completed")
        return {
            "job_id": row.id,
            "final_translation": result.final_translation,
            "token_usage": result.token_usage.model_dump(),
            "cost": result.cost,
            "steps": [step.step for step in result.steps],
        }

    async def _workflow(
        self, row: TranslationJobRow, context: TaskContext, stack: AsyncExitStack
    ) -> TranslationWorkflow:
        factory = self.setup.factory()
        if factory is not None:
            return factory(_input(row))
        self.setup.require([WorkflowMode(row.workflow_mode)])
        name, provider, _ = self.setup.provider()
        assert name is not None
        assert provider is not None
        assert provider.base_url
        http = await stack.enter_async_context(await self.clients.client(provider.timeout))
        client = ChatClient(
            http,
            provider=name,
            base_url=provider.base_url,
            api_key=provider.api_key(),
            breaker=self.breakers.get(breaker_name(name)),
            timeout=provider.timeout,
        )

        async def checkpoint(step: StepCheckpoint) -> None:
            await self.store.run(
                jobs.save_step(row.id, step.step, step.model_dump(mode="json"), now=self.clock())
            )

        return LLMTranslationWorkflow(
            client=client,
            provider=provider,
            settings=self.setup.settings,
            completed={
                key: StepCheckpoint.model_validate(value) for key, value in row.steps.items()
            },
            checkpoint=checkpoint,
            attempt=context.attempt,
            clock=self.clock,
            max_cost=row.task.metadata.get("max_cost"),
            rate_limit=None if provider.rate_limit is None else _ProviderLimit(context, name),
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
                cost=total_cost(output.steps),
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


def _input(row: TranslationJobRow) -> TranslationInput:
    return TranslationInput(
        original_poem=row.original_text,
        source_lang=row.source_language,
        target_lang=row.target_language,
        workflow_mode=WorkflowMode(row.workflow_mode),
        metadata=row.metadata,
    )


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
