"""Which functions run which tasks in this process.

A task is either of a *registered type* (``@manager.task("name")``: any worker process
that registered it can run it, and it resumes after a restart) or an unregistered
callable (a closure passed to ``create_task``/``submit``): it belongs to the process that
submitted it, and only that process can run it.
"""

from __future__ import annotations

from .context import TaskFunction
from .models import TaskRecord
from .retry import RetryConfig

__all__ = ["Registry", "TaskType"]


class TaskType:
    """A registered task type: its handler and optional retry policy."""

    __slots__ = ("fn", "name", "retry")

    def __init__(self, name: str, fn: TaskFunction, retry: RetryConfig | None = None) -> None:
        self.name = name
        self.fn = fn
        self.retry = retry


class Registry:
    """Registered task types and this process's closures (by task id)."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self._types: dict[str, TaskType] = {}
        self._closures: dict[str, TaskFunction] = {}

    def register(self, name: str, fn: TaskFunction, *, retry: RetryConfig | None = None) -> None:
        if not name:
            raise ValueError("task type name must not be empty")
        self._types[name] = TaskType(name, fn, retry)

    @property
    def names(self) -> list[str]:
        """The registered task types, sorted."""
        return sorted(self._types)

    def get(self, name: str) -> TaskType | None:
        return self._types.get(name)

    def retry_for(self, task_type: str) -> RetryConfig | None:
        spec = self._types.get(task_type)
        return spec.retry if spec else None

    def add_closure(self, task_id: str, fn: TaskFunction) -> None:
        self._closures[task_id] = fn

    def drop_closure(self, task_id: str) -> None:
        self._closures.pop(task_id, None)

    def handler_for(self, task: TaskRecord) -> TaskFunction | None:
        """The function that runs ``task`` here, if this process has it."""
        if task.owner is not None:
            return self._closures.get(task.id) if task.owner == self.worker_id else None
        spec = self._types.get(task.task_type)
        return spec.fn if spec else None
