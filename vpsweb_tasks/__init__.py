"""vpsweb-tasks: a durable background-task system for Python applications.

The public API; everything else is an implementation detail.
"""

from .breakers import (
    BreakerConfig,
    BreakerRegistry,
    get_breaker,
    get_breaker_registry,
    with_circuit_breaker,
)
from .classify import classify_error, register_error_rule
from .collector import tune_garbage_collector
from .config import Settings, load_config
from .context import ProcessContext, TaskContext, current_task
from .errors import (
    CircuitOpenError,
    DependencyFailedError,
    DependencyNotFoundError,
    DuplicateScheduleError,
    ErrorCategory,
    HandlerUnavailableError,
    InvalidInputError,
    InvalidScheduleError,
    LeaseLostError,
    ManagerNotRunningError,
    MemoryLimitError,
    QueueFullError,
    RateLimitKeyError,
    Retry,
    ScheduleNotFoundError,
    StorageCorruptError,
    StorageError,
    StorageUnavailableError,
    TaskNotFoundError,
    TaskProcessError,
    TaskStateError,
    TaskTimeoutError,
    UnknownQueueError,
    UnknownTaskTypeError,
    VpswebTasksError,
)
from .events import EventHub
from .manager import Extension, TaskManager, get_task_manager, set_task_manager
from .models import (
    DeadLetter,
    ExecutionRecord,
    ProgressUpdate,
    QueueStatus,
    TaskDefinition,
    TaskPriority,
    TaskRecord,
    TaskStatus,
)
from .monitor import TaskMonitor, get_task_monitor
from .retry import RetryConfig, RetryPolicy, RetryStrategy, with_retry
from .schedules import ScheduleDefinition, ScheduleRecord

__version__ = "0.1.0"

__all__ = [
    "BreakerConfig",
    "BreakerRegistry",
    "CircuitOpenError",
    "DeadLetter",
    "DependencyFailedError",
    "DependencyNotFoundError",
    "DuplicateScheduleError",
    "ErrorCategory",
    "EventHub",
    "ExecutionRecord",
    "Extension",
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
    "TaskPriority",
    "TaskProcessError",
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
]
