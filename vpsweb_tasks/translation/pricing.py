"""What translation steps cost: token estimates, prices, and the job's cost cap.

Tokens come from the provider's reported ``usage``; when it reports none, they are
estimated at about four characters a token (the rule of thumb OpenAI documents for English;
other scripts use more tokens a character, so the estimate is marked ``estimated``).
A step's cost is its tokens at its model's price (``providers.<name>.prices``). Before a
step starts, its cost is estimated from its prompt and the answer it may give (at most
``translation.max_tokens`` tokens, else twice the poem's tokens: a translation and its
notes), so a job's cap can stop it before the step that would exceed it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from .models import StepCheckpoint, TokenUsage
from .settings import ModelPrice, ProviderSettings

__all__ = [
    "CHARS_PER_TOKEN",
    "answer_estimate",
    "estimate_tokens",
    "price_for",
    "total_cost",
    "with_estimates",
]

#: Characters per token of the estimate.
CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """About how many tokens ``text`` is (at least 1 for any text)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def answer_estimate(poem: str, max_tokens: int | None) -> int:
    """The tokens a step's answer is expected to take at most."""
    return max_tokens if max_tokens is not None else 2 * estimate_tokens(poem)


def price_for(provider: ProviderSettings, *models: str) -> ModelPrice | None:
    """The price of the first of ``models`` that has one."""
    for model in models:
        if model in provider.prices:
            return provider.prices[model]
    return None


def total_cost(steps: Iterable[StepCheckpoint]) -> float | None:
    """What the steps cost together; None if none had a price."""
    costs = [step.cost for step in steps if step.cost is not None]
    return sum(costs) if costs else None


def with_estimates(usage: TokenUsage, prompt: str, answer: str) -> TokenUsage:
    """``usage`` as reported, its missing counts estimated from the texts."""
    if usage.prompt_tokens and usage.completion_tokens:
        return usage
    prompt_tokens = usage.prompt_tokens or estimate_tokens(prompt)
    completion_tokens = usage.completion_tokens or estimate_tokens(answer)
    return TokenUsage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        estimated=True,
    )
