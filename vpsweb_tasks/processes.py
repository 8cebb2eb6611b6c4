"""Process tasks: a supervised pool of child processes, each task under a memory limit.

A task type registered with ``process=True`` runs in a child process
(:mod:`vpsweb_tasks._child`), not in the worker: a task that runs out of memory, crashes
the interpreter or ignores cancellation takes only its child down. The pool:

* starts children on demand (``python -P``, talking JSON lines over stdin/stdout, through
  ``anyio.open_process``: no thread waits on a pipe), at most
  ``background_tasks.process_pool_size`` at once;
* keeps an idle child for the next task **of the same type** (a child that ran type A is
  not handed a task of type B: the modules, globals and heap that A left would count
  against B's memory limit); an idle child of another type is retired to make room;
* sets the child's address-space limit (``RLIMIT_AS``) to the task's ``memory_limit_mb``
  before the task and lifts it after: the limit covers the whole child (Python itself,
  ~15 MB, and the modules the task imports), as the kernel counts it;
* kills the child (SIGKILL) when the task is cancelled or times out, or the worker shuts
  down, and waits for it, so no child outlives its task's attempt; a child that hit its
  memory limit or died is not reused.

Failures come back as exceptions of the worker: the task's own exception when it can be
unpickled here (with the child's traceback as a note), else :class:`TaskProcessError`;
:class:`MemoryLimitError` for a task that hit its limit and :class:`TaskProcessError`
for a child that died without answering (category ``resource``, both).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import pickle
import signal
import subprocess
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from . import _child
from .context import TaskContext
from .errors import (
    ConfigError,
    ErrorCategory,
    HandlerUnavailableError,
    MemoryLimitError,
    ResultNotSerializableError,
    TaskProcessError,
)
from .models import TaskRecord

__all__ = ["MIN_MEMORY_LIMIT_MB", "ProcessPool", "ProcessSpec", "function_target"]

logger = logging.getLogger("vpsweb_tasks.processes")

#: The smallest memory limit a process task may have: a child Python with nothing but the
#: standard library loaded takes ~15 MB of address space; below this it cannot start.
MIN_MEMORY_LIMIT_MB = 32.0

#: The largest message (a result, a progress update) a child may send.
MAX_MESSAGE_BYTES = 256 * 2**20

#: How long a child gets to start and answer ``init``.
START_TIMEOUT = 30.0

_MB = 2**20


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """How a process task type runs: the function as the child imports it, and its memory
    limit (None: ``background_tasks.task_memory_limit_mb``)."""

    target: str
    """``module:qualname``."""
    memory_limit_mb: float | None


def function_target(fn: Any, *, field: str = "fn") -> str:
    """``module:qualname`` of a function a child process can import, or ValueError saying
    why it cannot (a closure, a lambda, a method of an instance, a script's interactive
    ``__main__``)."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise ValueError(
            f"{field}: a process task's function must be a module-level function (the"
            f" child process imports it by name); got {fn!r}"
        )
    if "<locals>" in qualname or "<lambda>" in qualname:
        raise ValueError(
            f"{field}: a process task's function must be defined at a module's top level"
            f" (the child process imports it by name); {module}.{qualname} is a"
            f" {'lambda' if '<lambda>' in qualname else 'closure'}"
        )
    if module == "__main__" and _main_path() is None:
        raise ValueError(
            f"{field}: {qualname} is defined in an interactive __main__, which a child"
            " process cannot import: move it to a module"
        )
    owner = sys.modules.get(module)
    if owner is not None and module != "__main__":
        found: Any = owner
        for part in qualname.split("."):
            found = getattr(found, part, None)
            if found is None:
                break
        # None: the module is still being imported (a decorator runs before the name is
        # bound); the child finds out for itself.
        if found is not None and not _same_function(found, fn):
            raise ValueError(
                f"{field}: {module}.{qualname} names another object than this function,"
                " so the child process would run something else"
            )
    return f"{module}:{qualname}"


def _same_function(found: Any, fn: Any) -> bool:
    """Whether ``found`` is ``fn``, or one wraps the other (``functools.wraps``)."""

    def chain(obj: Any) -> list[int]:
        ids: list[int] = []
        while obj is not None and len(ids) < 100:
            ids.append(id(obj))
            obj = getattr(obj, "__wrapped__", None)
        return ids

    return bool(set(chain(found)) & set(chain(fn)))


def _main_path() -> str | None:
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return str(Path(path).resolve()) if isinstance(path, str) else None


class _Child:
    """One child process and its pipes."""

    def __init__(self, process: anyio.abc.Process, task_type: str) -> None:
        self.process = process
        self.task_type = task_type
        assert process.stdin is not None
        assert process.stdout is not None
        self.stdin = process.stdin
        self.stdout = BufferedByteReceiveStream(process.stdout)
        self.vm = 0  # address space, bytes, as last reported

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def send(self, message: dict[str, Any]) -> None:
        await self.stdin.send(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def try_send(self, message: dict[str, Any]) -> bool:
        """Send, or False if the child is gone."""
        try:
            await self.send(message)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return False
        return True

    async def receive(self) -> dict[str, Any] | None:
        """The next message; None when the child closed its end (it died)."""
        try:
            line = await self.stdout.receive_until(b"\n", MAX_MESSAGE_BYTES)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
            return None
        message: dict[str, Any] = json.loads(line)
        return message

    async def kill(self) -> None:
        """SIGKILL it (if still running) and reap it. Call shielded."""
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()
        await self.process.aclose()

    async def close(self, grace: float = 2.0) -> None:
        """Ask it to exit (it exits when its stdin closes); kill it after ``grace``."""
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self.stdin.aclose()
        with anyio.move_on_after(grace):
            await self.process.wait()
        await self.kill()

    def death(self) -> str:
        code = self.process.returncode
        if code is None:
            return "closed its pipe"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            if -code == signal.SIGKILL:
                return (
                    f"was killed by {name} (the kernel's out-of-memory killer, or another process)"
                )
            return f"was killed by {name}"
        return f"exited with status {code}"


class ProcessPool:
    """The child processes of one worker. Start nothing until the first process task."""

    def __init__(self, *, size: int, default_memory_limit_mb: float) -> None:
        self.size = size
        self.default_memory_limit_mb = default_memory_limit_mb
        self._limiter: anyio.CapacityLimiter | None = None
        self._idle: OrderedDict[int, _Child] = OrderedDict()  # pid -> child, oldest first
        self._busy: dict[int, _Child] = {}
        self._closed = False
        self.started = 0
        """Children started so far (for statistics and tests)."""

    @property
    def pids(self) -> list[int]:
        """Pids of the children alive now, busy or idle."""
        return [*self._busy, *self._idle]

    def limit_mb(self, spec: ProcessSpec) -> float:
        return spec.memory_limit_mb or self.default_memory_limit_mb

    async def run(self, spec: ProcessSpec, task: TaskRecord, context: TaskContext) -> Any:
        """Run ``task`` in a child and return its result, or raise its failure. Cancelling
        the caller kills the child."""
        if self._closed:
            raise HandlerUnavailableError("the worker's process pool is closed")
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.size)
        limit_mb = self.limit_mb(spec)
        async with self._limiter:
            request = _run_request(spec, limit_mb, task, context.dependency_results)
            child = await self._take_idle(task.task_type)
            keep = False
            try:
                if child is not None and not await child.try_send(request):
                    with anyio.CancelScope(shield=True):  # it died while idle
                        await child.kill()
                    child = None
                if child is None:
                    child = await self._start(task.task_type)
                    await child.send(request)
                self._busy[child.pid] = child
                result, keep = await self._run_in(child, limit_mb, spec, task, context)
                return result
            finally:
                if child is not None:
                    self._busy.pop(child.pid, None)
                    if keep and child.alive and not self._closed:
                        self._idle[child.pid] = child
                    else:
                        with anyio.CancelScope(shield=True):
                            await child.kill()

    async def _take_idle(self, task_type: str) -> _Child | None:
        for pid, child in list(self._idle.items()):
            if not child.alive:  # died while idle (killed from outside): reap it
                del self._idle[pid]
                with anyio.CancelScope(shield=True):
                    await child.kill()
            elif child.task_type == task_type:
                del self._idle[pid]
                return child
        return None

    async def _start(self, task_type: str) -> _Child:
        # Room for one more: retire the idle child of another type that waited longest.
        # Each busy or starting child holds a token, this one's included.
        assert self._limiter is not None
        while self._idle and len(self._idle) + self._limiter.borrowed_tokens > self.size:
            _, old = self._idle.popitem(last=False)
            with anyio.CancelScope(shield=True):
                await old.close()
        process = await anyio.open_process(
            [sys.executable, "-P", _child.__file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
        )
        child = _Child(process, task_type)
        self.started += 1
        try:
            with anyio.fail_after(START_TIMEOUT):
                await child.send({"op": "init", "sys_path": sys.path, "main_path": _main_path()})
                ready = await child.receive()
            if ready is None or ready.get("op") != "ready":
                raise TaskProcessError(f"the task's process (pid {child.pid}) {child.death()}")
            child.vm = int(ready["vm"])
        except BaseException:
            with anyio.CancelScope(shield=True):
                await child.kill()
            raise
        return child

    async def _run_in(
        self,
        child: _Child,
        limit_mb: float,
        spec: ProcessSpec,
        task: TaskRecord,
        context: TaskContext,
    ) -> tuple[Any, bool]:
        """Relay the progress of the task sent to ``child`` until its answer: the task's
        result and whether the child may run another task."""
        while True:
            message = await child.receive()
            if message is None:
                await child.process.wait()
                raise TaskProcessError(
                    f"the task's process (pid {child.pid}) {child.death()} while running the"
                    f" task (memory limit {limit_mb:g} MB)"
                )
            op = message["op"]
            if op == "progress":
                await self._progress(context, message)
                continue
            child.vm = int(message.get("vm") or child.vm)
            if op == "done":
                return message["result"], True
            raise self._failure(message, spec, limit_mb, task)

    async def _progress(self, context: TaskContext, message: dict[str, Any]) -> None:
        progress = message.get("progress")
        if not isinstance(progress, int | float) or not math.isfinite(progress):
            return
        metadata = message.get("metadata")
        try:
            await context.update_progress(
                min(max(float(progress), 0.0), 1.0),
                message.get("message"),
                metadata if isinstance(metadata, dict) else None,
            )
        except (TypeError, ValueError):
            context.logger.warning("dropped a progress update from the task's process")

    def _failure(
        self, message: dict[str, Any], spec: ProcessSpec, limit_mb: float, task: TaskRecord
    ) -> BaseException:
        kind = message.get("kind")
        detail = f"{message.get('name', 'Error')}: {message.get('message', '')}".rstrip(": ")
        if kind == "baseline":
            used = int(message.get("vm", 0)) / _MB
            return ConfigError(
                f"memory_limit_mb of task type {task.task_type!r} is {limit_mb:g} MB, below the"
                f" {used:.0f} MB its process takes before the task starts (Python and the"
                " modules it imports): raise memory_limit_mb"
            )
        if kind == "memory":
            return MemoryLimitError(
                f"task exceeded its memory limit of {limit_mb:g} MB (memory_limit_mb, the"
                f" address space of its process): {detail}"
            )
        if kind == "import":
            return HandlerUnavailableError(
                f"the task's process could not import {spec.target}: {detail}"
            )
        if kind == "result":
            return ResultNotSerializableError(f"task returned a non-JSON result: {detail}")
        error = _unpickle(message.get("pickle"))
        if error is None:
            category = message.get("category")
            return TaskProcessError(
                f"{message.get('type', 'Error')}: {message.get('message', '')}",
                category=ErrorCategory(category)
                if isinstance(category, str) and category in set(ErrorCategory)
                else ErrorCategory.UNKNOWN,
                traceback=message.get("traceback"),
            )
        if message.get("traceback"):
            error.add_note(f"in the task's process:\n{message['traceback']}")
        return error

    async def aclose(self) -> None:
        """Stop the idle children (running ones are killed by their tasks' cancellation)."""
        self._closed = True
        idle, self._idle = list(self._idle.values()), OrderedDict()
        with anyio.CancelScope(shield=True):
            for child in idle:
                await child.close()


def _run_request(
    spec: ProcessSpec,
    limit_mb: float,
    task: TaskRecord,
    dependency_results: dict[str, Any],
) -> dict[str, Any]:
    return {
        "op": "run",
        "target": spec.target,
        "limit": int(limit_mb * _MB),
        "task": {
            "id": task.id,
            "name": task.name,
            "task_type": task.task_type,
            "attempt": task.attempts,
            "payload": task.payload,
            "metadata": task.metadata,
            "dependency_results": dependency_results,
        },
    }


def _unpickle(data: Any) -> Exception | None:
    if not isinstance(data, str):
        return None
    try:
        error = pickle.loads(base64.b64decode(data))  # our own child: trusted
    except Exception:
        return None
    # Never a BaseException that is not an Exception (a cancellation) in the worker.
    return error if isinstance(error, Exception) else None
