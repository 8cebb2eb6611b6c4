"""The child side of process tasks: a loop that runs one task at a time under a memory limit.

Started by :mod:`vpsweb_tasks.processes` as ``python -P <this file>``: a script, so that
starting a child imports only the standard library (a task's module imports what it needs,
once per child). It talks to its parent in JSON lines over the pipes that were its stdin
and stdout; the task's own prints go to stderr.

The parent sends ``init`` (its ``sys.path``, and its main script for tasks defined there),
then ``run`` messages, one at a time; the child answers ``ready``, then per task any number
of ``progress`` lines and one ``done`` or ``error``. Before each task the child sets its
address-space limit (``RLIMIT_AS``) to the task's memory limit, and lifts it after. A task
that hits the limit is reported as ``memory`` and the child exits: its heap is not trusted
for another task.

Stdlib only, on purpose: importing :mod:`vpsweb_tasks` costs ~0.7 s and ~45 MB of address
space, which a task that does not need it should not pay.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import importlib.util
import inspect
import json
import logging
import math
import os
import pickle
import resource
import sys
import traceback
from collections.abc import Callable
from typing import IO, Any

_PAGE = os.sysconf("SC_PAGE_SIZE")


def address_space() -> int:
    """This process's virtual memory size in bytes (what ``RLIMIT_AS`` limits)."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[0]) * _PAGE


class _TaskLogger(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"task_id:{self.extra['task_id'] if self.extra else '?'} {msg}", kwargs


class ProcessTaskContext:
    """What a process task's function receives (it satisfies
    :class:`vpsweb_tasks.context.ProcessContext`). Progress goes to the parent, which
    passes it on as the task's own; a cancel or a timeout kills this process, so
    ``cancelled`` is always false here and ``check_cancelled`` never raises."""

    def __init__(self, task: dict[str, Any], send: Callable[[dict[str, Any]], None]) -> None:
        self.task_id: str = task["id"]
        self.name: str = task["name"]
        self.task_type: str = task["task_type"]
        self.attempt: int = task["attempt"]
        self.payload: dict[str, Any] = task["payload"]
        self.metadata: dict[str, Any] = task["metadata"]
        self.dependency_results: dict[str, Any] = task.get("dependency_results", {})
        self.progress = 0.0
        self.message: str | None = None
        self._send = send
        self.logger = _TaskLogger(logging.getLogger("vpsweb_tasks.task"), {"task_id": self.task_id})

    @property
    def cancelled(self) -> bool:
        return False

    def check_cancelled(self) -> None:
        """Nothing to check: a cancel kills the task's process."""

    def report_progress(
        self,
        progress: float,
        message: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Report progress (0..1); the parent publishes it as the task's progress."""
        if isinstance(progress, bool) or not isinstance(progress, int | float):
            raise TypeError("progress must be a number between 0 and 1")
        if not math.isfinite(progress) or not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress must be between 0 and 1, got {progress!r}")
        self.progress = float(progress)
        if message is not None:
            self.message = message
        self._send(
            {"op": "progress", "progress": self.progress, "message": message, "metadata": metadata}
        )

    async def update_progress(
        self,
        progress: float,
        message: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.report_progress(progress, message, metadata)


class _Child:
    def __init__(self, inp: IO[bytes], out: IO[bytes]) -> None:
        self.inp = inp
        self.out = out
        self.functions: dict[str, Callable[..., Any]] = {}
        self.main_path: str | None = None
        self.soft, self.hard = resource.getrlimit(resource.RLIMIT_AS)

    def send(self, message: dict[str, Any]) -> None:
        self.out.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        self.out.flush()

    def receive(self) -> dict[str, Any] | None:
        line = self.inp.readline()
        if not line:
            return None  # the parent is gone or closed the pipe: exit
        message: dict[str, Any] = json.loads(line)
        return message

    def init(self, message: dict[str, Any]) -> None:
        paths = [p for p in message["sys_path"] if p not in sys.path]
        sys.path[:0] = paths
        self.main_path = message.get("main_path")
        self.send({"op": "ready", "pid": os.getpid(), "vm": address_space()})

    def resolve(self, target: str) -> Callable[..., Any]:
        known = self.functions.get(target)
        if known is not None:
            return known
        module_name, _, qualname = target.partition(":")
        if module_name == "__main__":
            module = sys.modules.get("__mp_main__")
            if module is None:
                if not self.main_path:
                    raise ImportError("the parent's __main__ has no file to import")
                spec = importlib.util.spec_from_file_location("__mp_main__", self.main_path)
                if spec is None or spec.loader is None:
                    raise ImportError(f"cannot import {self.main_path}")
                module = importlib.util.module_from_spec(spec)
                sys.modules["__mp_main__"] = module
                spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
        found: Any = module
        for part in qualname.split("."):
            found = getattr(found, part)
        if not callable(found):
            raise ImportError(f"{target} is not callable")
        fn: Callable[..., Any] = found
        self.functions[target] = fn
        return fn

    def run(self, message: dict[str, Any]) -> bool:
        """Run one task; False when this child must exit (it ran out of memory)."""
        task, target, limit = message["task"], message["target"], int(message["limit"])
        try:
            fn = self.resolve(target)
        except BaseException as exc:
            self.send(_error("import", exc, vm=address_space()))
            return True
        before = address_space()
        if before >= limit:
            self.send({"op": "error", "kind": "baseline", "vm": before, "message": ""})
            return True
        context = ProcessTaskContext(task, self.send)
        resource.setrlimit(resource.RLIMIT_AS, (limit, self.hard))
        try:
            if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
                getattr(fn, "__call__", None)  # noqa: B004 (an object with async __call__)
            ):
                import anyio

                result = anyio.run(fn, context)
            else:
                result = fn(context)
                if inspect.isawaitable(result):
                    import anyio

                    async def wait(awaitable: Any = result) -> Any:
                        return await awaitable

                    result = anyio.run(wait)
        except BaseException as exc:
            self._lift_limit()
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                exc = RuntimeError(f"the task raised {type(exc).__name__}")
            memory = _memory_error(exc)
            self.send(_error("memory" if memory else "raised", exc, vm=address_space()))
            return not memory
        finally:
            self._lift_limit()
        try:
            encoded = json.dumps(
                {"op": "done", "result": result, "vm": address_space()},
                separators=(",", ":"),
                allow_nan=False,
            )
        except (TypeError, ValueError) as exc:
            self.send(_error("result", exc, vm=address_space()))
            return True
        self.out.write(encoded.encode() + b"\n")
        self.out.flush()
        return True

    def _lift_limit(self) -> None:
        resource.setrlimit(resource.RLIMIT_AS, (self.soft, self.hard))

    def serve(self) -> None:
        while (message := self.receive()) is not None:
            op = message["op"]
            if op == "init":
                self.init(message)
            elif op == "run":
                if not self.run(message):
                    return
            elif op == "exit":
                return


def _memory_error(exc: BaseException) -> bool:
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, MemoryError):
            return True
        follow = current.__cause__ or current.__context__
        if follow is not None:
            stack.append(follow)
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
    return False


def _category(exc: BaseException) -> str | None:
    """The child's own classification, used when the parent cannot rebuild the exception
    (only when the task's code already imported vpsweb_tasks: a rule it registered
    lives here)."""
    classify = sys.modules.get("vpsweb_tasks.classify")
    if classify is None:
        return None
    with contextlib.suppress(Exception):
        return str(classify.classify_error(exc))
    return None


def _error(kind: str, exc: BaseException, *, vm: int) -> dict[str, Any]:
    pickled: str | None = None
    with contextlib.suppress(Exception):
        pickled = base64.b64encode(pickle.dumps(exc)).decode()
    return {
        "op": "error",
        "kind": kind,
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "name": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
        "pickle": pickled,
        "category": _category(exc),
        "vm": vm,
    }


def _die_with_parent() -> None:
    """Linux: be killed when the parent dies, even in the middle of a task."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def main() -> None:
    _die_with_parent()
    # The protocol keeps the original pipes; the task's stdout goes to stderr and its
    # stdin reads nothing.
    inp = os.fdopen(os.dup(0), "rb")
    out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    _Child(inp, out).serve()


if __name__ == "__main__":
    main()
