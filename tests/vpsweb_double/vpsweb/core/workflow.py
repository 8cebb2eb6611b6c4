"""VPSWeb's TranslationWorkflow: its constructor's configuration rules, its execute()."""

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from ..models.config import WorkflowMode
from ..models.translation import TranslationInput
from ..services.config import ConfigFacade, get_config_facade

STEP_NAMES = ("Initial Translation", "Editor Review", "Translator Revision")


class Revised(BaseModel):
    revised_translation: str


class TranslationOutput(BaseModel):
    workflow_mode: str
    target_lang: str
    metadata: dict[str, Any] | None
    revised_translation: Revised


class TranslationWorkflow:
    def __init__(
        self,
        config_or_facade: Any = None,
        providers_config: Any = None,
        workflow_mode: WorkflowMode | None = None,
        task_service: Any = None,
        task_id: str | None = None,
        system_config: dict[str, Any] | None = None,
        repository_service: Any = None,
        config_facade: ConfigFacade | None = None,
        complete_config: Any = None,
    ) -> None:
        self._config_facade: Any
        if config_facade is not None:
            self._config_facade, self._using_facade = config_facade, True
        else:
            try:
                self._config_facade, self._using_facade = get_config_facade(), True
            except RuntimeError:
                if config_or_facade is None or providers_config is None or workflow_mode is None:
                    raise ValueError(
                        "Legacy initialization requires config, providers_config, and workflow_mode"
                    ) from None
                self._config_facade, self._using_facade = None, False
                self.workflow_mode = workflow_mode
        self.progress_callback: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    def _get_workflow_mode(self) -> WorkflowMode:
        if self._using_facade:
            return WorkflowMode(self._config_facade.get_workflow_info()["mode"])
        return self.workflow_mode

    async def execute(
        self, input_data: TranslationInput, show_progress: bool = True
    ) -> TranslationOutput | None:
        if self._cancelled:
            return None
        mode = self._get_workflow_mode().value
        for name in STEP_NAMES:
            if self.progress_callback:
                await self.progress_callback(name, {"status": "running", "message": name})
                await self.progress_callback(name, {"status": "completed", "tokens_used": 1})
        text = f"{mode}/{input_data.target_lang.value}: {input_data.original_poem}"
        return TranslationOutput(
            workflow_mode=mode,
            target_lang=input_data.target_lang.value,
            metadata=input_data.metadata,
            revised_translation=Revised(revised_translation=text),
        )
