"""Which functions run which tasks in this process, and where they run.

A task is either of a *registered type* (``@manager.task("name")``: any worker process
that registered it can run it, and it resumes after a restart) or an unregistered
callable (a closure passed to ``create_task``/``submit``): it belongs to the process that
submitted it, and only that process can run it.

Where a task's function runs (its :class:`Handler`'s ``runs_in``):

* ``loop``: an ``async def`` function, on the worker's event loop;
* ``thread``: a plain ``def`` function, in a worker thread (never on the loop);
* ``process``: a type registered with ``process=True``, in a child process under a memory
  limit (:mod:`vpsweb_tasks.processes`).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Literal

from .context import AnyTaskFunction
from .models import TaskRecord
from .processes import MIN_MEMORY_LIMIT_MB, ProcessSpec, function_target
from .retry import RetryConfig

__all__ = ["Handler", "Registry", "TaskType", "is_async_function"]

RunsIn = Literal["loop", "thread", "process"]


def is_async_function(fn: Any) -> bool:
    """Whether calling ``fn`` returns a coroutine: an ``async def`` function (also behind
    ``functools.partial`` or ``functools.wraps``), or an object with an async ``__call__``."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 (an object with an async __call__)
    )


@dataclass(frozen=True, slots=True)
class Handler:
    """A task's function and where it runs."""

    fn: AnyTaskFunction
    runs_in: RunsIn
    process: ProcessSpec | None = None

    @classmethod
    def of(cls, fn: AnyTaskFunction) -> Handler:
        return cls(fn, "loop" if is_async_function(fn) else "thread")


class TaskType:
    """A registered task type: its handler and optional retry policy."""

    __slots__ = ("handler", "name", "rate_limits", "retry")

    def __init__(
        self,
        name: str,
        handler: Handler,
        retry: RetryConfig | None = None,
        rate_limits: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.handler = handler
        self.retry = retry
        self.rate_limits = rate_limits

    @property
    def fn(self) -> AnyTaskFunction:
        return self.handler.fn


def _memory_limit(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"memory_limit_mb must be a number of MB, got {value!r}")
    if not math.isfinite(value) or value < MIN_MEMORY_LIMIT_MB:
        raise ValueError(
            f"memory_limit_mb must be at least {MIN_MEMORY_LIMIT_MB:g} (what a child"
            f" Python process needs to start), got {value!r}"
        )
    return float(value)


class Registry:
    """Registered task types and this process's closures (by task id)."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self._types: dict[str, TaskType] = {}
        self._closures: dict[str, Handler] = {}

    def register(
        self,
        name: str,
        fn: AnyTaskFunction,
        *,
        retry: RetryConfig | None = None,
        process: bool = False,
        memory_limit_mb: float | None = None,
        rate_limits: tuple[str, ...] = (),
    ) -> None:
        """Register ``fn`` for task type ``name``. ``process``: run it in a child process
        (``fn`` must be importable by name: a module-level function), under
        ``memory_limit_mb`` (None: the configured default). Raises ValueError or TypeError
        naming the argument that is wrong."""
        if not name:
            raise ValueError("task type name must not be empty")
        if not callable(fn):
            raise TypeError(f"fn must be a function, got {fn!r}")
        if not isinstance(process, bool):
            raise TypeError(f"process must be True or False, got {process!r}")
        if process:
            limit = None if memory_limit_mb is None else _memory_limit(memory_limit_mb)
            spec = ProcessSpec(function_target(fn), limit)
            handler = Handler(fn, "process", spec)
        else:
            if memory_limit_mb is not None:
                raise ValueError(
                    "memory_limit_mb applies to process tasks only: register with process=True"
                )
            handler = Handler.of(fn)
        self._types[name] = TaskType(name, handler, retry, rate_limits)

    @property
    def names(self) -> list[str]:
        """The registered task types, sorted."""
        return sorted(self._types)

    def get(self, name: str) -> TaskType | None:
        return self._types.get(name)

    def retry_for(self, task_type: str) -> RetryConfig | None:
        spec = self._types.get(task_type)
        return spec.retry if spec else None

    def add_closure(self, task_id: str, fn: AnyTaskFunction) -> None:
        self._closures[task_id] = Handler.of(fn)

    def drop_closure(self, task_id: str) -> None:
        self._closures.pop(task_id, None)

    def handler_for(self, task: TaskRecord) -> Handler | None:
        """The handler that runs ``task`` here, if this process has it."""
        if task.owner is not None:
            return self._closures.get(task.id) if task.owner == self.worker_id else None
        spec = self._types.get(task.task_type)
        return spec.handler if spec else None
