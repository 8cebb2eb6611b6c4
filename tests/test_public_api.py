"""The public API is short and deliberate: this test makes changing it a decision."""

from __future__ import annotations

import vpsweb_tasks

PUBLIC = {
    "BreakerConfig",
    "BreakerRegistry",
    "CircuitOpenError",
    "DeadLetter",
    "DuplicateScheduleError",
    "DependencyFailedError",
    "DependencyNotFoundError",
    "ErrorCategory",
    "EventHub",
    "Extension",
    "ExecutionRecord",
    "HandlerUnavailableError",
    "InvalidInputError",
    "InvalidScheduleError",
    "LeaseLostError",
    "ManagerNotRunningError",
    "MemoryLimitError",
    "ProcessContext",
    "ProgressUpdate",
    "QueueFullError",
    "QueueStatus",
    "RateLimitKeyError",
    "Retry",
    "RetryConfig",
    "RetryPolicy",
    "RetryStrategy",
    "ScheduleDefinition",
    "ScheduleNotFoundError",
    "ScheduleRecord",
    "Settings",
    "StorageCorruptError",
    "StorageError",
    "StorageUnavailableError",
    "TaskContext",
    "TaskDefinition",
    "TaskManager",
    "TaskMonitor",
    "TaskNotFoundError",
    "TaskProcessError",
    "TaskPriority",
    "TaskRecord",
    "TaskStateError",
    "TaskStatus",
    "TaskTimeoutError",
    "UnknownQueueError",
    "UnknownTaskTypeError",
    "VpswebTasksError",
    "__version__",
    "classify_error",
    "current_task",
    "get_breaker",
    "get_breaker_registry",
    "get_task_manager",
    "get_task_monitor",
    "load_config",
    "register_error_rule",
    "set_task_manager",
    "tune_garbage_collector",
    "with_circuit_breaker",
    "with_retry",
}


def test_all_is_the_agreed_public_api() -> None:
    assert set(vpsweb_tasks.__all__) == PUBLIC
    for name in vpsweb_tasks.__all__:
        assert hasattr(vpsweb_tasks, name), name


def test_the_core_never_imports_fastapi() -> None:
    import subprocess
    import sys

    code = "import sys, vpsweb_tasks; sys.exit('fastapi' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
