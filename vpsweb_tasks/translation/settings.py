"""The translation extension's config sections: ``providers`` and ``translation``."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from ..config import PositiveSeconds, RateLimitSettings

__all__ = ["REFERENCE", "ModelPrice", "ProviderSettings", "Providers", "TranslationSettings"]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class ModelPrice(_Section):
    """The price of one model's tokens: ``providers.<name>.prices.<model>``."""

    prompt: float = Field(ge=0, allow_inf_nan=False)
    """Price of a million prompt (input) tokens, in ``translation.currency``."""
    completion: float = Field(ge=0, allow_inf_nan=False)
    """Price of a million completion (output) tokens, in ``translation.currency``."""

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt + completion_tokens * self.completion) / 1_000_000


class ProviderSettings(_Section):
    """An OpenAI-compatible chat-completions provider for translation jobs (Ollama,
    llama.cpp's server, vLLM, OpenAI, DeepSeek...): ``providers.<name>``."""

    base_url: str | None = None
    """Base URL of the chat-completions API, e.g. http://127.0.0.1:11434/v1 (steps POST to
    {base_url}/chat/completions)."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (the key is never stored).
    Unset: requests carry no Authorization header (local servers)."""
    models: dict[str, str] = Field(default_factory=dict)
    """Model by workflow mode (reasoning, non_reasoning, hybrid), by step
    (initial_translation, editor_review, translator_revision) or by both
    ("hybrid.editor_review"); the most specific entry wins, then "default"."""
    timeout: PositiveSeconds = 120.0
    """Timeout of one LLM call (connect, read, write)."""
    rate_limit: RateLimitSettings | None = None
    """The provider's rate limit, shared by every process on the task database:
    ``{requests, per, tokens}`` per model (limit ``llm:<name>``, key
    ``llm:<name>:<model>``). Each step of a job takes a slot before its call and reports
    the call's tokens after it. null: calls are not limited."""
    prices: dict[str, ModelPrice] = Field(default_factory=dict)
    """Prices by model name (as ``models`` names them, or as the provider answers), per
    million tokens: ``{qwen2.5:7b: {prompt: 0.1, completion: 0.3}}``. Each step's cost is
    recorded from them; a model without a price costs nothing that can be counted."""

    def model_for(self, mode: str, step: str) -> str | None:
        """The model of one step in one workflow mode, or None if none is configured."""
        for key in (f"{mode}.{step}", step, mode, "default"):
            if key in self.models:
                return self.models[key]
        return None

    def api_key(self) -> str | None:
        """The key from the environment variable named by ``api_key_env``, if set."""
        return (os.environ.get(self.api_key_env) or None) if self.api_key_env else None


class TranslationSettings(_Section):
    """Translation jobs (the VPSWeb adapter): which provider they use and how."""

    workflow: Literal["builtin", "vpsweb"] = "builtin"
    """The workflow jobs run: the built-in one (calling the provider below), or VPSWeb's
    own TranslationWorkflow when the vpsweb package is importable (configured by VPSWeb's
    config; no provider needed here)."""
    provider: str | None = None
    """Name of the entry of ``providers`` translation steps call; unset: the only provider
    configured."""
    temperature: float = Field(default=0.7, ge=0, le=2)
    """Sampling temperature of every step."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Upper bound on tokens generated per step (unset: the provider's default)."""
    max_retries: int = Field(default=3, ge=0)
    """Retries of a translation job (a retry resumes at the first unfinished step)."""
    max_batch_size: int = Field(default=50, ge=1)
    """Most jobs accepted in one batch submit."""
    health_check_timeout: PositiveSeconds = 5.0
    """Upper bound on the live provider check of vpsweb/health."""
    currency: str = Field(default="USD", min_length=1, max_length=10)
    """The currency of ``providers.<name>.prices`` and of the costs reported (a label)."""
    max_cost_per_job: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Cost cap of every job, in ``currency`` (a request's ``max_cost`` may lower it): a
    step whose estimated cost would take the job past it is not started, and the job
    fails with category ``budget``. Unset: no cap."""
    heartbeat_seconds: PositiveSeconds = 15.0
    """A job's event stream (translation/{job_id}/events) that has had nothing to send
    this long sends a heartbeat: a comment, so proxies keep it open, and VPSWeb's
    ``heartbeat`` event."""


class Providers(RootModel[dict[str, ProviderSettings]]):
    """The ``providers`` section: one entry per provider name."""

    root: dict[str, ProviderSettings] = Field(default_factory=dict)


#: The sections as docs/configuration.md documents them (``config_reference(REFERENCE)``).
REFERENCE: list[tuple[str, type[BaseModel]]] = [
    ("providers.<name>", ProviderSettings),
    ("providers.<name>.prices.<model>", ModelPrice),
    ("translation", TranslationSettings),
]
