"""One call to an OpenAI-compatible chat-completions endpoint, under the provider's breaker.

No retries here: a failed call fails the step, and the task system's durable retry (which
resumes at that step) is the one retry layer. Errors are typed so they classify as the
spec says: 401/403 permission, 429 external_service with its Retry-After, 5xx / timeouts /
dropped connections external_service, other 4xx validation.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from .. import tracing
from ..breakers import Breaker
from ..classify import parse_retry_after
from .errors import (
    ProviderAuthError,
    ProviderRateLimitError,
    ProviderRequestError,
    ProviderUnavailableError,
)
from .models import TokenUsage
from .pricing import with_estimates

__all__ = ["ChatClient", "ChatCompletion", "breaker_name"]

# Reasoning models served by Ollama / llama.cpp put their thinking in the content.
_THINKING = re.compile(r"<think>.*?</think>", re.DOTALL)


def breaker_name(provider: str) -> str:
    """The circuit breaker of one provider (shared by every job that calls it)."""
    return f"llm:{provider}"


@dataclass(frozen=True, slots=True)
class ChatCompletion:
    content: str
    model: str
    usage: TokenUsage
    duration_seconds: float


class ChatClient:
    """Posts chat completions for one provider through an ``httpx.AsyncClient``."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        provider: str,
        base_url: str,
        api_key: str | None,
        breaker: Breaker,
        timeout: float | None = None,
    ) -> None:
        self.http = http
        self.provider = provider
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.breaker = breaker
        self.timeout = timeout
        """Bound on a whole call (httpx's own timeouts bound each read, not the total)."""
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def complete(
        self,
        *,
        model: str,
        messages: list[dict[str, str]],
        temperature: float,
        max_tokens: int | None = None,
        step: str | None = None,
    ) -> ChatCompletion:
        """One completion, in a ``chat <model>`` span when traced (``step``: the
        translation step it is for, an attribute of the span)."""
        body: dict[str, Any] = {"model": model, "messages": messages, "temperature": temperature}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        started = time.perf_counter()
        with tracing.llm_call(
            provider=self.provider,
            model=model,
            url=self.url,
            temperature=temperature,
            max_tokens=max_tokens,
            step=step,
        ) as call:
            async with self.breaker.guard():
                response = await self._post(body)
                content, answered_by, usage = self._parse(response, model)
            call.answered(
                model=answered_by,
                input_tokens=usage.prompt_tokens or None,  # 0: not reported (then estimated)
                output_tokens=usage.completion_tokens or None,
            )
        prompt = "\n".join(message["content"] for message in messages)
        return ChatCompletion(
            content=content,
            model=answered_by,
            usage=with_estimates(usage, prompt, content),
            duration_seconds=time.perf_counter() - started,
        )

    async def _post(self, body: dict[str, Any]) -> httpx.Response:
        try:
            with anyio.fail_after(self.timeout):
                response = await self.http.post(self.url, json=body, headers=self._headers)
        except TimeoutError as exc:
            raise ProviderUnavailableError(
                f"no answer within {self.timeout:g}s", provider=self.provider
            ) from exc
        except httpx.TimeoutException as exc:
            raise ProviderUnavailableError(
                f"no answer in time ({type(exc).__name__})", provider=self.provider
            ) from exc
        except httpx.TransportError as exc:
            raise ProviderUnavailableError(
                f"connection failed: {type(exc).__name__}: {exc}", provider=self.provider
            ) from exc
        status = response.status_code
        if status < 400:
            return response
        detail = _detail(response)
        who = self.provider
        if status in (401, 403):
            raise ProviderAuthError(
                f"HTTP {status} (check the API key): {detail}", provider=who, status=status
            )
        if status == 429:
            header = response.headers.get("retry-after")
            retry_after = None if header is None else parse_retry_after(header, time.time())
            raise ProviderRateLimitError(
                f"HTTP 429 rate limited: {detail}",
                provider=self.provider,
                status=status,
                retry_after=retry_after,
            )
        if status == 408 or status >= 500:
            raise ProviderUnavailableError(
                f"HTTP {status}: {detail}", provider=self.provider, status=status
            )
        raise ProviderRequestError(f"HTTP {status}: {detail}", provider=who, status=status)

    def _parse(self, response: httpx.Response, model: str) -> tuple[str, str, TokenUsage]:
        try:
            data = response.json()
            content = data["choices"][0]["message"]["content"]
            if not isinstance(content, str):
                raise TypeError("message content is not text")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ProviderUnavailableError(
                f"the answer is not a chat completion ({type(exc).__name__}: {exc})",
                provider=self.provider,
                status=response.status_code,
            ) from exc
        content = _THINKING.sub("", content).strip()
        if not content:
            raise ProviderUnavailableError("the answer is empty", provider=self.provider)
        usage = data.get("usage") or {}
        try:
            tokens = TokenUsage(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                total_tokens=int(usage.get("total_tokens") or 0),
            )
        except (TypeError, ValueError, AttributeError):
            tokens = TokenUsage()
        if not tokens.total_tokens:
            tokens = tokens.model_copy(
                update={"total_tokens": tokens.prompt_tokens + tokens.completion_tokens}
            )
        answered_by = data.get("model")
        return content, answered_by if isinstance(answered_by, str) else model, tokens


def _detail(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(data, dict):
        error = data.get("error", data.get("detail"))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error is not None:
            return str(error)[:200]
    return str(data)[:200]
