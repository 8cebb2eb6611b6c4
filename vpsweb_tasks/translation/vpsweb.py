"""VPSWeb's own workflow, when the ``vpsweb`` package is importable.

``translation.workflow: vpsweb`` makes every job run ``vpsweb.core.workflow
.TranslationWorkflow`` (configured by VPSWeb's own config, its global ConfigFacade)
instead of the built-in workflow. The job still gets the durable queue, retries, cancel
(its ``execute`` runs inside the task's cancel scope, and its ``cancel()`` is called too),
progress and the event stream; VPSWeb's workflow has no step checkpoints, so a retry runs
it from the start.

**Workflow mode.** Whenever a ConfigFacade is available, VPSWeb's ``TranslationWorkflow``
takes its mode from the facade (``get_workflow_info()["mode"]``, its main config's
``workflow_mode``) and ignores its ``workflow_mode`` argument. Each job is therefore given
the global facade seen through :class:`ModeFacade`, which answers with the job's own mode:
the three modes of a comparison really differ.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import TranslationNotConfiguredError
from .languages import script_of, vpsweb_language
from .models import TranslationInput
from .workflow import ProgressCallback, TranslationWorkflow

__all__ = ["ModeFacade", "VPSWebWorkflow", "vpsweb_workflow_factory"]


class ModeFacade:
    """VPSWeb's ConfigFacade with another workflow mode: ``get_workflow_info()["mode"]``
    and ``main.workflow_mode`` say ``mode``; everything else is the facade's."""

    def __init__(self, facade: Any, mode: Any) -> None:
        self._facade = facade
        self._mode = mode

    def get_workflow_info(self) -> dict[str, Any]:
        info: dict[str, Any] = dict(self._facade.get_workflow_info())
        info["mode"] = getattr(self._mode, "value", self._mode)
        return info

    @property
    def main(self) -> Any:
        main = self._facade.main
        copy = getattr(main, "model_copy", None)
        return main if copy is None else copy(update={"workflow_mode": self._mode})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._facade, name)


class VPSWebWorkflow:
    """Adapts VPSWeb's ``TranslationWorkflow``: our input becomes VPSWeb's
    ``TranslationInput`` (in the language names it accepts: Traditional Chinese is its
    "Chinese", with ``source_script`` / ``target_script`` ``traditional`` in the
    metadata), the progress callback and ``cancel()`` are forwarded."""

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
        metadata = dict(input.metadata)
        for side, name in (("source", input.source_lang), ("target", input.target_lang)):
            if vpsweb_language(name) != name:
                metadata[f"{side}_script"] = script_of(name)
        converted = self.input_type(
            original_poem=input.original_poem,
            source_lang=vpsweb_language(input.source_lang),
            target_lang=vpsweb_language(input.target_lang),
            metadata=metadata or None,
        )
        return await self.inner.execute(converted, show_progress=False)

    def cancel(self) -> None:
        self.inner.cancel()


def _global_facade() -> tuple[bool, Any]:
    """(True, VPSWeb's global ConfigFacade or None), or (False, None) for a VPSWeb
    without one (its workflow then honours ``workflow_mode``)."""
    try:
        config = importlib.import_module("vpsweb.services.config")
    except ImportError:
        return False, None
    try:
        return True, config.get_config_facade()
    except RuntimeError:
        return True, None


def vpsweb_workflow_factory() -> Any:
    """A workflow factory making VPSWeb's workflows; raises
    :class:`TranslationNotConfiguredError` when ``vpsweb`` cannot be imported (and a job
    fails with it when VPSWeb's ConfigFacade has not been initialised)."""
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
        mode = mode_type(input.workflow_mode.value)
        has_facades, facade = _global_facade()
        if not has_facades:
            return VPSWebWorkflow(workflow_type(workflow_mode=mode), input_type)
        if facade is None:
            raise TranslationNotConfiguredError(
                [
                    "translation.workflow is vpsweb, but VPSWeb's ConfigFacade is not"
                    " initialised: call vpsweb.services.config.initialize_config_facade()"
                    " first, as VPSWeb's app does at startup"
                ]
            )
        inner = workflow_type(config_facade=ModeFacade(facade, mode), workflow_mode=mode)
        return VPSWebWorkflow(inner, input_type)

    return make
