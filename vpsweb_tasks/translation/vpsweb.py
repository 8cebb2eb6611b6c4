"""VPSWeb's own workflow, when the ``vpsweb`` package is importable.

``translation.workflow: vpsweb`` makes every job run ``vpsweb.core.workflow
.TranslationWorkflow`` (configured by VPSWeb's own config, its global ConfigFacade)
instead of the built-in workflow. The job still gets the durable queue, retries, cancel
(its ``execute`` runs inside the task's cancel scope, and its ``cancel()`` is called too),
progress and the event stream; VPSWeb's workflow has no step checkpoints, so a retry runs
it from the start.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import TranslationNotConfiguredError
from .models import TranslationInput
from .workflow import ProgressCallback, TranslationWorkflow

__all__ = ["VPSWebWorkflow", "vpsweb_workflow_factory"]


class VPSWebWorkflow:
    """Adapts VPSWeb's ``TranslationWorkflow``: our input becomes VPSWeb's
    ``TranslationInput`` (its language names are ours), the progress callback and
    ``cancel()`` are forwarded."""

    def __init__(self, inner: Any, input_type: Any) -> None:
        self.inner = inner
        self.input_type = input_type

    @property
    def progress_callback(self) -> ProgressCallback | None:
        callback: ProgressCallback | None = getattr(self.inner, "progress_callback", None)
        return callback

    @progress_callback.setter
    def progress_callback(self, callback: ProgressCallback | None) -> None:
        self.inner.progress_callback = callback

    async def execute(self, input: TranslationInput) -> Any:
        converted = self.input_type(
            original_poem=input.original_poem,
            source_lang=input.source_lang,
            target_lang=input.target_lang,
            metadata=input.metadata or None,
        )
        return await self.inner.execute(converted, show_progress=False)

    def cancel(self) -> None:
        self.inner.cancel()


def vpsweb_workflow_factory() -> Any:
    """A workflow factory making VPSWeb's workflows; raises
    :class:`TranslationNotConfiguredError` when ``vpsweb`` cannot be imported."""
    try:
        workflow_module = importlib.import_module("vpsweb.core.workflow")
        config_module = importlib.import_module("vpsweb.models.config")
        models_module = importlib.import_module("vpsweb.models.translation")
    except ImportError as exc:
        raise TranslationNotConfiguredError(
            [f"translation.workflow is vpsweb, but the vpsweb package cannot be imported ({exc})"]
        ) from exc
    workflow_type = workflow_module.TranslationWorkflow
    mode_type = config_module.WorkflowMode
    input_type = models_module.TranslationInput

    def make(input: TranslationInput) -> TranslationWorkflow:
        inner = workflow_type(workflow_mode=mode_type(input.workflow_mode.value))
        return VPSWebWorkflow(inner, input_type)

    return make
