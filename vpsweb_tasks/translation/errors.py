"""The translation extension's exceptions, under the library's root::

VpswebTasksError
├── ConfigError
│   └── NotConfiguredError
│       └── TranslationNotConfiguredError  no usable LLM provider for translations
├── TaskNotFoundError
│   └── TranslationJobNotFoundError         no translation job with that id
├── CostCapExceededError          the next step would take a job past its cost cap (budget)
└── ProviderError                 an LLM provider's call failed (status, retry_after)
    ├── ProviderAuthError         401/403: the key is missing or wrong (permission)
    ├── ProviderRateLimitError    429, with the Retry-After it sent (external_service)
    ├── ProviderUnavailableError  5xx, timeout, dropped connection, unusable answer
    └── ProviderRequestError      another 4xx: the request itself is wrong (validation)
"""

from __future__ import annotations

from ..errors import (
    ErrorCategory,
    NotConfiguredError,
    TaskNotFoundError,
    VpswebTasksError,
)

__all__ = [
    "CostCapExceededError",
    "ProviderAuthError",
    "ProviderError",
    "ProviderRateLimitError",
    "ProviderRequestError",
    "ProviderUnavailableError",
    "TranslationJobNotFoundError",
    "TranslationNotConfiguredError",
]


class TranslationJobNotFoundError(TaskNotFoundError):
    """No translation job with the given id (the id may be another kind of task's)."""

    def __init__(self, job_id: str) -> None:
        VpswebTasksError.__init__(self, f"translation job not found: {job_id}")
        self.task_id = job_id
        self.job_id = job_id


class CostCapExceededError(VpswebTasksError):
    """A job's next step would take its cost past the job's cap (``max_cost``), so it was
    not started: category ``budget``, never retried. The finished steps stay paid for and
    checkpointed."""

    category = ErrorCategory.BUDGET

    def __init__(
        self, *, step: str, spent: float, estimate: float, cap: float, currency: str
    ) -> None:
        super().__init__(
            f"cost cap reached: {step} would take the job from {spent:.6g} to about"
            f" {spent + estimate:.6g} {currency}, past its max_cost of {cap:.6g} {currency}"
        )
        self.step = step
        self.spent = spent
        self.estimate = estimate
        self.cap = cap


class TranslationNotConfiguredError(NotConfiguredError):
    """Translation jobs cannot run: no LLM provider is configured (or its configuration is
    incomplete). ``problems`` lists what to configure, one key per entry."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("translation jobs", problems)


class ProviderError(VpswebTasksError):
    """A call to an LLM provider failed. ``status`` is the HTTP status (None when no
    answer came), ``retry_after`` the seconds the provider asked us to wait."""

    category = ErrorCategory.EXTERNAL_SERVICE

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.status = status
        self.retry_after = retry_after


class ProviderAuthError(ProviderError):
    """401/403: the API key is missing, wrong or not allowed. Not retried."""

    category = ErrorCategory.PERMISSION


class ProviderRateLimitError(ProviderError):
    """429: retried no sooner than the provider's Retry-After."""


class ProviderUnavailableError(ProviderError):
    """5xx, a timeout, a dropped connection or an answer that is not a chat completion."""


class ProviderRequestError(ProviderError):
    """Another 4xx (unknown model, request too large...): repeating it cannot help."""

    category = ErrorCategory.VALIDATION
