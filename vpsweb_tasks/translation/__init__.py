"""Translation jobs: the VPSWeb extension.

:class:`TranslationExtension` installs them on a manager; :class:`TranslationRequest`
validates a job; :class:`VPSWebAdapter` (one per manager, see :func:`get_vpsweb_adapter`)
submits, follows, retries, cancels, batches and compares jobs;
:class:`LLMTranslationWorkflow` runs VPSWeb's three steps (initial translation, editor
review, translator revision) against any OpenAI-compatible chat-completions server, and
VPSWeb's own workflow can be injected instead (:class:`TranslationWorkflow`). See
docs/translation.md.
"""

from .adapter import TASK_TYPE, VPSWebAdapter
from .errors import CostCapExceededError
from .extension import TranslationExtension, get_vpsweb_adapter
from .languages import LANGUAGES, normalise_language
from .models import (
    STEP_NAMES,
    STEPS,
    CompareRequest,
    Comparison,
    ComparisonEntry,
    IntegrationStatus,
    KeyUsage,
    ModelUsage,
    ProviderHealth,
    StepCheckpoint,
    TokenUsage,
    TranslationBatch,
    TranslationInput,
    TranslationJob,
    TranslationMetadata,
    TranslationOutput,
    TranslationRequest,
    TranslationResult,
    UsageSummary,
    WorkflowMode,
)
from .providers import WorkflowFactory
from .settings import ModelPrice, ProviderSettings, TranslationSettings
from .workflow import LLMTranslationWorkflow, ProgressCallback, TranslationWorkflow

__all__ = [
    "LANGUAGES",
    "STEPS",
    "STEP_NAMES",
    "TASK_TYPE",
    "CompareRequest",
    "Comparison",
    "ComparisonEntry",
    "CostCapExceededError",
    "IntegrationStatus",
    "KeyUsage",
    "LLMTranslationWorkflow",
    "ModelPrice",
    "ModelUsage",
    "ProgressCallback",
    "ProviderHealth",
    "ProviderSettings",
    "StepCheckpoint",
    "TokenUsage",
    "TranslationBatch",
    "TranslationExtension",
    "TranslationInput",
    "TranslationJob",
    "TranslationMetadata",
    "TranslationOutput",
    "TranslationRequest",
    "TranslationResult",
    "TranslationSettings",
    "TranslationWorkflow",
    "UsageSummary",
    "VPSWebAdapter",
    "WorkflowFactory",
    "WorkflowMode",
    "get_vpsweb_adapter",
    "normalise_language",
]
