"""VPSWeb's workflow modes and the part of its config the facade reads."""

from enum import Enum

from pydantic import BaseModel


class WorkflowMode(str, Enum):  # noqa: UP042 - as VPSWeb declares it
    REASONING = "reasoning"
    NON_REASONING = "non_reasoning"
    HYBRID = "hybrid"


class MainConfig(BaseModel):
    workflow_mode: WorkflowMode = WorkflowMode.HYBRID


class CompleteConfig(BaseModel):
    main: MainConfig = MainConfig()
