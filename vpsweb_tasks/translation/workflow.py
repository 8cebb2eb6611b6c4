"""VPSWeb's three-step translation workflow, on any OpenAI-compatible provider.

A workflow is anything with VPSWeb's duck-typed interface (:class:`TranslationWorkflow`):
``await execute(input)`` returns the output (None when it was cancelled), an async
``progress_callback(step_name, details)`` attribute it calls as steps start and finish
(``details["status"]``: ``running``, ``completed`` with ``tokens_used``, ``duration`` and
``model_info``, or ``failed`` with ``error``), and ``cancel()``. VPSWeb's own workflow can be
injected through :class:`~vpsweb_tasks.translation.adapter.VPSWebAdapter`'s
``workflow_factory``; :class:`LLMTranslationWorkflow` is the built-in one.

The built-in workflow checkpoints each step as it finishes and is given the checkpoints of
earlier attempts: it skips the steps already done, so a retried job resumes at its first
unfinished step and never calls the provider again for a finished one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import anyio

from .client import ChatClient
from .errors import CostCapExceededError
from .languages import script_of
from .models import (
    STEP_NAMES,
    STEPS,
    StepCheckpoint,
    TranslationInput,
    TranslationOutput,
)
from .pricing import answer_estimate, estimate_tokens, price_for, total_cost
from .settings import ProviderSettings, TranslationSettings

__all__ = [
    "Checkpointer",
    "LLMTranslationWorkflow",
    "ProgressCallback",
    "TranslationWorkflow",
    "build_messages",
]

#: ``await progress_callback(step_name, details)``, VPSWeb's signature.
ProgressCallback = Callable[[str, dict[str, Any]], Awaitable[None]]
#: Stores a finished step's checkpoint (durably) before the next step starts.
Checkpointer = Callable[[StepCheckpoint], Awaitable[None]]


@runtime_checkable
class TranslationWorkflow(Protocol):
    """VPSWeb's workflow interface (duck-typed)."""

    progress_callback: ProgressCallback | None

    async def execute(self, input: TranslationInput) -> Any: ...

    def cancel(self) -> None: ...


_TAG = r"<{0}>\s*(.*?)\s*</{0}>"


def _tag(text: str, name: str) -> str | None:
    found = re.search(_TAG.format(name), text, re.DOTALL | re.IGNORECASE)
    return found.group(1).strip() if found else None


def _about(input: TranslationInput) -> str:
    parts = []
    if input.metadata.get("title"):
        parts.append(f"Title: {input.metadata['title']}")
    if input.metadata.get("author"):
        parts.append(f"Author: {input.metadata['author']}")
    return "\n".join(parts) + ("\n\n" if parts else "")


def _script(language: str) -> str:
    """Which characters to write Chinese in (the language names keep the script)."""
    script = script_of(language)
    return f" Use {script} Chinese characters." if script else ""


def build_messages(
    step: str, input: TranslationInput, done: Mapping[str, StepCheckpoint]
) -> list[dict[str, str]]:
    """The chat messages of one step, given the steps before it."""
    src, tgt = input.source_lang, input.target_lang
    about = _about(input)
    if step == "initial_translation":
        system = (
            f"You are an accomplished poet and translator from {src} into {tgt}. Translate"
            " faithfully to the meaning, the imagery and the music of the original." + _script(tgt)
        )
        user = (
            f"{about}Translate this poem from {src} into {tgt}.\n\n"
            f"<original>\n{input.original_poem}\n</original>\n\n"
            "Answer with the translation in <translation></translation> tags, then brief"
            " translator's notes in <notes></notes> tags."
        )
    elif step == "editor_review":
        system = (
            f"You are an exacting editor of poetry translated from {src} into {tgt}."
            " You suggest concrete improvements; you do not rewrite the whole poem."
        )
        user = (
            f"{about}<original>\n{input.original_poem}\n</original>\n\n"
            f"<translation>\n{done['initial_translation'].output}\n</translation>\n\n"
            "Review the translation for accuracy, fluency, tone and form. Answer with a"
            " numbered list of specific suggestions."
        )
    elif step == "translator_revision":
        system = (
            f"You are the translator of this poem from {src} into {tgt}, revising your"
            " work after an editor's review." + _script(tgt)
        )
        user = (
            f"{about}<original>\n{input.original_poem}\n</original>\n\n"
            f"<translation>\n{done['initial_translation'].output}\n</translation>\n\n"
            f"<review>\n{done['editor_review'].output}\n</review>\n\n"
            "Revise the translation, taking the suggestions you agree with. Answer with the"
            " revised translation in <translation></translation> tags, then notes on what"
            " you changed in <notes></notes> tags."
        )
    else:
        raise ValueError(f"unknown step {step!r}")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


class RateLimitHooks(Protocol):
    """A provider's shared rate limit, as the workflow's steps use it."""

    async def acquire(self, model: str) -> None:
        """Wait for a slot of ``model``'s key and take it."""

    async def report(self, model: str, tokens: int) -> None:
        """Reconcile ``model``'s key with the tokens a call used."""


class LLMTranslationWorkflow:
    """Initial translation -> editor review -> translator revision, one chat completion
    each. ``completed`` holds checkpoints of earlier attempts (skipped), ``checkpoint``
    stores each new one as its step finishes. :meth:`cancel` stops the step in flight (its
    request is abandoned) and makes :meth:`execute` return None."""

    def __init__(
        self,
        *,
        client: ChatClient,
        provider: ProviderSettings,
        settings: TranslationSettings,
        completed: Mapping[str, StepCheckpoint] | None = None,
        checkpoint: Checkpointer | None = None,
        attempt: int = 1,
        clock: Callable[[], float] = time.time,
        progress_callback: ProgressCallback | None = None,
        max_cost: float | None = None,
        rate_limit: RateLimitHooks | None = None,
    ) -> None:
        self.client = client
        self.rate_limit = rate_limit
        """Takes a slot of the provider's rate limit before each call (by model) and
        reports the call's tokens after it."""
        self.max_cost = max_cost
        """The job's cost cap: a step that would take the job past it is not started."""
        self.provider = provider
        self.settings = settings
        self.completed = dict(completed or {})
        self.checkpoint = checkpoint
        self.attempt = attempt
        self.clock = clock
        self.progress_callback = progress_callback
        self._scope: anyio.CancelScope | None = None
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True
        if self._scope is not None:
            self._scope.cancel()

    async def _report(self, step: str, details: dict[str, Any]) -> None:
        if self.progress_callback is not None:
            await self.progress_callback(STEP_NAMES[step], {"step": step, **details})

    async def execute(self, input: TranslationInput) -> TranslationOutput | None:
        done: dict[str, StepCheckpoint] = {}
        with anyio.CancelScope() as scope:
            self._scope = scope
            if self._cancelled:
                scope.cancel()
            for index, step in enumerate(STEPS):
                previous = self.completed.get(step)
                if previous is not None:
                    done[step] = previous
                    await self._report(step, _completed(previous, index, resumed=True))
                    continue
                done[step] = await self._run_step(step, index, input, done)
        self._scope = None
        if scope.cancelled_caught:
            return None
        return TranslationOutput(steps=[done[step] for step in STEPS])

    async def _run_step(
        self, step: str, index: int, input: TranslationInput, done: dict[str, StepCheckpoint]
    ) -> StepCheckpoint:
        model = self.provider.model_for(input.workflow_mode.value, step)
        if model is None:  # the adapter checks this before accepting a job
            raise ValueError(f"no model configured for {input.workflow_mode.value}.{step}")
        messages = build_messages(step, input, done)
        self._check_cost(step, model, messages, input, done)
        await self._report(step, {"status": "running", "index": index, "model": model})
        if self.rate_limit is not None:
            await self.rate_limit.acquire(model)
        try:
            answer = await self.client.complete(
                model=model,
                messages=messages,
                temperature=self.settings.temperature,
                max_tokens=self.settings.max_tokens,
                step=step,
            )
        except Exception as exc:
            with anyio.CancelScope(shield=True):
                await self._report(step, {"status": "failed", "index": index, "error": str(exc)})
            raise
        if step == "editor_review":
            output, notes = answer.content, None
        else:
            output = _tag(answer.content, "translation") or answer.content
            notes = _tag(answer.content, "notes")
        price = price_for(self.provider, model, answer.model)
        usage = answer.usage
        if self.rate_limit is not None:
            await self.rate_limit.report(model, usage.prompt_tokens + usage.completion_tokens)
        cost = None if price is None else price.cost(usage.prompt_tokens, usage.completion_tokens)
        result = StepCheckpoint(
            step=step,
            name=STEP_NAMES[step],
            output=output,
            notes=notes,
            model=answer.model,
            tokens=usage,
            cost=cost,
            duration_seconds=answer.duration_seconds,
            finished_at=self.clock(),
            attempt=self.attempt,
        )
        if self.checkpoint is not None:
            # Paid for: stored even if the job is being cancelled right now.
            with anyio.CancelScope(shield=True):
                await self.checkpoint(result)
        await self._report(step, _completed(result, index, resumed=False))
        return result

    def _check_cost(
        self,
        step: str,
        model: str,
        messages: list[dict[str, str]],
        input: TranslationInput,
        done: Mapping[str, StepCheckpoint],
    ) -> None:
        """Raise CostCapExceededError if this step's estimated cost would take the job
        past its cap (a model without a price adds nothing that can be counted)."""
        price = price_for(self.provider, model)
        if self.max_cost is None or price is None:
            return
        spent = total_cost(done.values()) or 0.0
        prompt = estimate_tokens("\n".join(m["content"] for m in messages))
        answer = answer_estimate(input.original_poem, self.settings.max_tokens)
        estimate = price.cost(prompt, answer)
        if spent + estimate > self.max_cost:
            raise CostCapExceededError(
                step=step,
                spent=spent,
                estimate=estimate,
                cap=self.max_cost,
                currency=self.settings.currency,
            )


def _completed(result: StepCheckpoint, index: int, *, resumed: bool) -> dict[str, Any]:
    return {
        "status": "completed",
        "index": index,
        "tokens_used": result.tokens.total_tokens,
        "cost": result.cost,
        "duration": result.duration_seconds,
        "model_info": {"model": result.model},
        "resumed": resumed,
    }
