"""VPSWeb's configuration facade: one global instance, initialised by its app."""

from typing import Any

from ...models.config import CompleteConfig, MainConfig

_config_facade: "ConfigFacade | None" = None


class ConfigFacade:
    def __init__(self, complete_config: CompleteConfig) -> None:
        self._config = complete_config

    @property
    def main(self) -> MainConfig:
        return self._config.main

    def get_workflow_info(self) -> dict[str, Any]:
        return {"name": "double", "version": "0", "mode": self._config.main.workflow_mode.value}


def initialize_config_facade(complete_config: CompleteConfig) -> ConfigFacade:
    global _config_facade
    _config_facade = ConfigFacade(complete_config)
    return _config_facade


def get_config_facade() -> ConfigFacade:
    if _config_facade is None:
        raise RuntimeError("ConfigFacade not initialized")
    return _config_facade
