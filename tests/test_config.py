"""Configuration: the document's keys and defaults, YAML, environment, and clear errors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from vpsweb_tasks.config import Settings, config_reference, load_config
from vpsweb_tasks.errors import ConfigError
from vpsweb_tasks.translation.settings import REFERENCE

DOCUMENT_DEFAULTS = {
    "background_tasks": {
        "enabled": True,
        "max_concurrent_jobs": 3,
        "job_timeout": 300,
        "cleanup_interval": 3600,
        "max_retry_attempts": 3,
        "retry_delay": 60,
        "max_queue_size": 100,
        "queue_check_interval": 1.0,
        "task_retention_hours": 24,
        "task_timeouts": {"translation": 600, "maintenance": 300, "cleanup": 120, "backup": 1800},
        "max_memory_mb": 512,
        "max_cpu_percent": 80.0,
        "enable_priority_queue": True,
        "pause_on_overload": True,
        "overload_threshold": 0.9,
    },
    "task_monitoring": {
        "enable_health_checks": True,
        "health_check_interval": 60,
        "enable_task_metrics": True,
        "metrics_history_size": 1000,
        "failed_task_threshold": 5,
        "queue_size_warning": 50,
        "memory_usage_warning": 0.8,
        "track_task_lifecycle": True,
        "enable_task_tracing": False,
    },
    "system_resources": {
        "enable_resource_monitoring": True,
        "resource_check_interval": 30,
        "max_cpu_usage": 80.0,
        "cpu_warning_threshold": 70.0,
        "max_memory_usage_percent": 85.0,
        "memory_warning_threshold": 75.0,
        "max_disk_usage_percent": 90.0,
        "disk_warning_threshold": 80.0,
    },
}


def test_every_document_key_has_its_document_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VPSWEB_TASKS_CONFIG", raising=False)
    settings = load_config()
    for section, keys in DOCUMENT_DEFAULTS.items():
        for key, default in keys.items():
            assert getattr(getattr(settings, section), key) == default, f"{section}.{key}"


def test_yaml_file_then_environment_then_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "background_tasks:\n"
        "  max_concurrent_jobs: 5\n"
        "  retry_delay: 30\n"
        "  task_timeouts:\n"
        "    translation: 900\n"
        "task_monitoring:\n"
        "  queue_size_warning: 10\n"
    )
    monkeypatch.setenv("VPSWEB_TASKS_BACKGROUND_TASKS__RETRY_DELAY", "5")
    monkeypatch.setenv("VPSWEB_TASKS_STORAGE__SQLITE_PATH", str(tmp_path / "env.db"))
    settings = load_config(path, background_tasks={"max_queue_size": 7})
    tasks = settings.background_tasks
    assert tasks.max_concurrent_jobs == 5  # file
    assert tasks.retry_delay == 5.0  # environment beats file
    assert tasks.max_queue_size == 7  # override
    assert tasks.task_timeouts["translation"] == 900  # file entry...
    assert tasks.task_timeouts["backup"] == 1800  # ...added to the defaults
    assert settings.task_monitoring.queue_size_warning == 10
    assert settings.storage.sqlite_path == tmp_path / "env.db"


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("background_tasks:\n  job_timeout: 42\n")
    monkeypatch.setenv("VPSWEB_TASKS_CONFIG", str(path))
    assert load_config().background_tasks.job_timeout == 42


def test_durations_accept_timedelta() -> None:
    settings = load_config(background_tasks={"job_timeout": timedelta(minutes=2)})
    assert settings.background_tasks.job_timeout == 120.0


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"background_tasks": {"max_concurrent_jobs": 0}}, "background_tasks.max_concurrent_jobs"),
        ({"background_tasks": {"overload_threshold": 1.5}}, "background_tasks.overload_threshold"),
        ({"background_tasks": {"job_timeout": "soon"}}, "background_tasks.job_timeout"),
        ({"background_tasks": {"typo_key": 1}}, "background_tasks.typo_key"),
        ({"storage": {"backend": "redis"}}, "storage.backend"),
        ({"system_resources": {"max_cpu_usage": 120}}, "system_resources.max_cpu_usage"),
        ({"task_monitoring": {"error_rate_critical": 0}}, "task_monitoring.error_rate_critical"),
        ({"task_monitoring": {"error_rate_warning": 1.5}}, "task_monitoring.error_rate_warning"),
        (
            {"task_monitoring": {"error_rate_warning": 0.3, "error_rate_critical": 0.2}},
            "task_monitoring: Value error, error_rate_warning must not be above"
            " error_rate_critical",
        ),
    ],
)
def test_invalid_values_name_the_key(overrides: dict[str, dict[str, object]], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(**overrides)


def test_invalid_yaml_value_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("task_monitoring:\n  metrics_history_size: -1\n")
    with pytest.raises(ConfigError, match=r"task_monitoring\.metrics_history_size"):
        load_config(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.background_tasks.max_concurrent_jobs = 9  # type: ignore[misc]


def test_timeout_precedence() -> None:
    tasks = load_config().background_tasks
    assert tasks.timeout_for("translation", 5.0) == 5.0  # the task's own
    assert tasks.timeout_for("translation", None) == 600.0  # task_timeouts[type]
    assert tasks.timeout_for("anything", None) == 300.0  # job_timeout


def test_configuration_reference_is_current() -> None:
    docs = Path(__file__).parent.parent / "docs" / "configuration.md"
    assert docs.read_text() == config_reference(REFERENCE), "regenerate docs/configuration.md"
