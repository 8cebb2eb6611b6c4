"""Translation requests, jobs and results: what VPSWeb sends and what it gets back."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from ..errors import ErrorCategory
from ..models import TaskPriority, TaskStatus
from ..validation import encode_json, json_values_problem, storable
from .languages import normalise_language

__all__ = [
    "MAX_TEXT_LENGTH",
    "STEPS",
    "STEP_NAMES",
    "BreakerInfo",
    "CompareRequest",
    "Comparison",
    "ComparisonEntry",
    "IntegrationStatus",
    "ProviderHealth",
    "StepCheckpoint",
    "StepState",
    "TokenUsage",
    "TranslationBatch",
    "TranslationInput",
    "TranslationJob",
    "TranslationMetadata",
    "TranslationOutput",
    "TranslationRequest",
    "TranslationResult",
    "WorkflowMode",
]

#: VPSWeb's bound on a poem's length, in characters.
MAX_TEXT_LENGTH = 50_000


class WorkflowMode(StrEnum):
    """VPSWeb's workflow modes; each picks its own models."""

    REASONING = "reasoning"
    NON_REASONING = "non_reasoning"
    HYBRID = "hybrid"


#: The three steps, in order, by key (as stored and configured).
STEPS: tuple[str, ...] = ("initial_translation", "editor_review", "translator_revision")
#: VPSWeb's names of the steps (its progress callback and UI use these).
STEP_NAMES: dict[str, str] = {
    "initial_translation": "Initial Translation",
    "editor_review": "Editor Review",
    "translator_revision": "Translator Revision",
}

#: A step's state: not started (in this attempt), running, finished, or failed.
StepState = Literal["waiting", "running", "completed", "failed"]

Language = Annotated[str, Field(min_length=1, max_length=50), AfterValidator(normalise_language)]


class TranslationMetadata(BaseModel):
    """About the poem. Other keys are kept as given (JSON, bounded in size)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    author: Annotated[str, Field(max_length=500), storable] | None = None
    title: Annotated[str, Field(max_length=500), storable] | None = None
    poem_id: Annotated[str, Field(max_length=100), storable] | int | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        # The values as given (a NaN would be dumped as null), then their JSON's size.
        problem = json_values_problem(self.model_dump())
        if problem is not None:
            raise ValueError(problem)
        encode_json(self.model_dump(mode="json"))
        return self


class TranslationRequest(BaseModel):
    """A translation job to run. Languages are codes (``en``, ``zh-Hans``, ``zh-CN``,
    ``pl``...) or names (``English``); both become VPSWeb's names (``Chinese``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    original_text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_LENGTH), storable]
    source_language: Language
    target_language: Language
    workflow_mode: WorkflowMode = WorkflowMode.HYBRID
    metadata: TranslationMetadata = Field(default_factory=TranslationMetadata)
    priority: TaskPriority = TaskPriority.NORMAL
    max_cost: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    """This job's cost cap, in ``translation.currency`` (at most
    ``translation.max_cost_per_job`` when that is set): a step that would take the job
    past it is not started, and the job fails with category ``budget``."""
    user: Annotated[str, Field(min_length=1, max_length=200), storable] | None = None
    """Who submits the job (an account id): the job's concurrency key is ``user:<user>``,
    so one user's batch shares the workers fairly with other users' jobs and runs at most
    ``background_tasks.max_running_per_key`` at once."""

    @field_validator("original_text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("original_text must not be blank")
        return value

    @model_validator(mode="after")
    def _two_languages(self) -> Self:
        if self.source_language == self.target_language:
            raise ValueError(f"source_language and target_language are both {self.source_language}")
        return self


class TranslationInput(BaseModel):
    """What a workflow's ``execute`` receives: VPSWeb's ``TranslationInput`` fields."""

    model_config = ConfigDict(frozen=True)

    original_poem: str
    source_lang: str
    target_lang: str
    workflow_mode: WorkflowMode
    metadata: dict[str, Any] = Field(default_factory=dict)


class TokenUsage(BaseModel):
    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    estimated: bool = False
    """True when the provider reported no usage (or only some of it) and the tokens were
    estimated from the text (about 4 characters a token)."""

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
            estimated=self.estimated or other.estimated,
        )


class StepCheckpoint(BaseModel):
    """One finished step, stored as it finishes: a retry never pays for it again."""

    model_config = ConfigDict(frozen=True)

    step: str
    name: str
    output: str
    notes: str | None = None
    model: str
    tokens: TokenUsage = Field(default_factory=TokenUsage)
    cost: float | None = None
    """What the step cost, from the provider's prices for its model (``providers.<name>.
    prices``); None when no price is configured for it."""
    duration_seconds: float
    finished_at: float
    """Epoch seconds."""
    attempt: int
    """The job's attempt that ran it."""


class TranslationOutput(BaseModel):
    """What the built-in workflow's ``execute`` returns."""

    model_config = ConfigDict(frozen=True)

    steps: list[StepCheckpoint]

    @property
    def final_translation(self) -> str:
        return self.steps[-1].output


class TranslationResult(BaseModel):
    """A finished job: every step's output, the final translation, models, tokens, times."""

    job_id: str
    status: TaskStatus
    source_language: str
    target_language: str
    workflow_mode: WorkflowMode
    original_text: str
    metadata: dict[str, Any]
    final_translation: str | None
    steps: list[StepCheckpoint]
    models_used: dict[str, str]
    """Model by step."""
    token_usage: TokenUsage
    cost: float | None = None
    """Sum of the steps' costs (None if no step had a price)."""
    duration_seconds: float
    """Sum of the steps' durations (time spent waiting in the queue excluded)."""
    workflow_output: dict[str, Any] | None = None
    """A custom workflow's own output, as it returned it (None for the built-in one)."""


class TranslationJob(BaseModel):
    """A job's state: its task's status and progress, and the steps finished so far."""

    job_id: str
    task_id: str
    status: TaskStatus
    cancel_requested: bool = Field(
        description="A cancel was requested while the job ran: the worker running it is"
        " stopping it (status becomes cancelled, or completed if its work had already"
        " returned)"
    )
    progress: float
    message: str | None
    current_step: str | None
    """Key of the step running or next to run (the one that failed, for a failed job);
    None once completed."""
    steps_completed: list[str]
    """Keys of the finished steps, in workflow order: checkpointed by the built-in
    workflow, or reported finished by any workflow's progress callback in the current
    attempt (all three once the job has completed)."""
    step_states: dict[str, StepState] = Field(default_factory=dict)
    """Every step's state by key, in workflow order: ``waiting``, ``running``,
    ``completed`` or ``failed`` (the step that was running when the attempt failed)."""
    steps: list[StepCheckpoint] = Field(default_factory=list)
    """The finished steps' checkpoints (output, notes, model, tokens, duration), in
    workflow order: visible while the job runs, and kept when it fails."""
    token_usage: TokenUsage = Field(default_factory=TokenUsage)
    """Tokens of the finished steps so far."""
    cost: float | None = None
    """Cost of the finished steps so far (None while no finished step had a price)."""
    max_cost: float | None = None
    """The job's cost cap (its request's ``max_cost``, else ``translation.max_cost_per_job``):
    a step that would take the cost past it is not started (category ``budget``)."""
    source_language: str
    target_language: str
    workflow_mode: WorkflowMode
    metadata: dict[str, Any]
    attempts: int
    error_message: str | None
    error_category: ErrorCategory | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result_available: bool
    replayed: bool = Field(
        default=False,
        description="This answer repeats an earlier submit's Idempotency-Key: the job is"
        " the earlier one's, nothing new was stored",
    )


class ComparisonEntry(BaseModel):
    """One workflow mode of a comparison."""

    workflow_mode: WorkflowMode
    job_id: str
    status: TaskStatus
    final_translation: str | None = None
    models_used: dict[str, str] = Field(default_factory=dict)
    token_usage: TokenUsage | None = None
    cost: float | None = None
    duration_seconds: float | None = None
    error_message: str | None = None


class Comparison(BaseModel):
    """One text through several modes, side by side (in the order asked)."""

    original_text: str
    source_language: str
    target_language: str
    entries: list[ComparisonEntry]
    complete: bool
    """True once every job has finished."""


class TranslationBatch(BaseModel):
    """Several jobs, accepted all together or not at all."""

    model_config = ConfigDict(extra="forbid")

    requests: list[TranslationRequest] = Field(min_length=1)


class CompareRequest(BaseModel):
    """One text through several workflow modes."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    original_text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_LENGTH), storable]
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


class ModelUsage(BaseModel):
    """What one model's steps took in a window: tokens, and cost where it had a price."""

    model: str
    steps: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    """None if none of these steps had a price."""
    estimated: bool
    """Some of the tokens were estimated (the provider reported no usage)."""


class KeyUsage(BaseModel):
    """What one concurrency key's jobs (a request's user: ``user:<user>``) took in a window."""

    key: str
    steps: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    """None if none of these steps had a price."""
    estimated: bool


class UsageSummary(BaseModel):
    """Tokens and cost of translation steps over the last ``window_seconds``."""

    window_seconds: float
    currency: str
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    by_model: list[ModelUsage]
    by_key: list[KeyUsage] = Field(default_factory=list)
    """By the jobs' concurrency key (a request's ``user``); jobs without one left out."""


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
    usage: UsageSummary
    """Tokens and cost of the steps of the statistics window (task_monitoring.
    statistics_window)."""


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
