"""Shared rate limits, concurrency keys and retry budgets (see docs/limits.md).

A rate limit is named in the config (``rate_limits: {NAME: {requests, per, tokens}}``).
Tasks consume it through *templates*: the limit's name alone (one key, the name), or a
key template that starts with the name and fills fields from the task's payload
(``llm:{provider}:{model}`` is limit ``llm``, one key per provider and model). A task
type lists its templates when registered (``rate_limits=[...]``), a task may add its own
(``TaskDefinition.rate_limits``); they are resolved to keys at submit and stored with the
task, and a claim takes a slot of each key (:func:`~vpsweb_tasks.storage.logic.claim_limited`).
Steps inside a running task take slots through ``context.acquire_rate``.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from typing import Any

from .config import RateLimitSettings, Settings
from .errors import RateLimitKeyError
from .storage.types import ClaimLimits, RateSpec

__all__ = [
    "FAIR_HORIZON_SECONDS",
    "claim_limits",
    "limit_name",
    "rate_spec",
    "resolve_rate_keys",
    "template_fields",
]

#: How far ahead of now a fairly placed task may be and still be claimed when a worker is
#: free (a key's batch is spread this far at most before it is claimed in turn).
FAIR_HORIZON_SECONDS = 86_400.0

_FORMATTER = string.Formatter()


def template_fields(template: str) -> list[str]:
    """The payload fields a key template names (``llm:{provider}:{model}``: provider,
    model). RateLimitKeyError for a template that is not one (an unclosed brace, a format
    spec, an attribute or index)."""
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise RateLimitKeyError(template, f"not a key template ({exc})") from None
    fields: list[str] = []
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            raise RateLimitKeyError(
                template, "a key template names plain payload fields only: {field}"
            )
        fields.append(field)
    return fields


def limit_name(template: str) -> str:
    """The limit a template consumes: the text before its first field, without the
    trailing separator (``llm:{provider}`` is limit ``llm``), or the whole name."""
    head = template.split("{", 1)[0]
    return head.rstrip(":/._-") if "{" in template else template


def check_templates(
    templates: Iterable[str], configured: Mapping[str, RateLimitSettings], *, field: str
) -> tuple[str, ...]:
    """``templates`` if each names a configured limit and is a valid template, else
    RateLimitKeyError naming it."""
    checked = tuple(templates)
    for template in checked:
        if isinstance(template, bool) or not isinstance(template, str) or not template:
            raise RateLimitKeyError(str(template), "must be a limit name", field=field)
        template_fields(template)
        name = limit_name(template)
        if name not in configured:
            known = ", ".join(sorted(configured)) or "none"
            raise RateLimitKeyError(
                template,
                f"no rate limit {name!r} is configured (rate_limits: {known})",
                field=field,
            )
    return checked


def resolve_rate_keys(
    templates: Iterable[str],
    payload: Mapping[str, Any],
    configured: Mapping[str, RateLimitSettings],
    *,
    field: str = "rate_limits",
) -> tuple[tuple[str, str], ...]:
    """The (limit name, key) pairs a task with ``payload`` consumes, each once.
    RateLimitKeyError naming the template for an unknown limit or a field the payload
    lacks (or holds something other than text or a number)."""
    pairs: dict[str, str] = {}
    for template in check_templates(templates, configured, field=field):
        values: dict[str, str] = {}
        for name in template_fields(template):
            if name not in payload:
                raise RateLimitKeyError(
                    template, f"the task's payload has no field {name!r}", field=field
                )
            found = payload[name]
            if isinstance(found, bool) or not isinstance(found, str | int | float):
                raise RateLimitKeyError(
                    template, f"payload field {name!r} must be text or a number", field=field
                )
            values[name] = str(found)
        key = template.format(**values)
        if len(key) > 255:
            raise RateLimitKeyError(template, "the key is longer than 255 characters")
        pairs.setdefault(key, limit_name(template))
    return tuple((name, key) for key, name in pairs.items())


def rate_spec(settings: RateLimitSettings) -> RateSpec:
    return RateSpec(requests=settings.requests, per=settings.per, tokens=settings.tokens)


def claim_limits(
    settings: Settings, rate_limits: Mapping[str, RateLimitSettings] | None = None
) -> tuple[ClaimLimits | None, float]:
    """What this process's claims enforce, and how far ahead a dispatch place may be: None
    (the plain claim: nothing configured) unless rate limits (``rate_limits``, default the
    config's), a running bound per key or fair queueing are."""
    config = settings.background_tasks
    rates = settings.rate_limits if rate_limits is None else rate_limits
    if not rates and config.max_running_per_key is None and config.fair_share_seconds is None:
        return None, 0.0
    limits = ClaimLimits(
        rates={name: rate_spec(each) for name, each in rates.items()},
        max_running_per_key=config.max_running_per_key,
    )
    return limits, 0.0 if config.fair_share_seconds is None else FAIR_HORIZON_SECONDS
