"""Module-level task functions for the process-task tests: a child process imports them
by name. Standard library only, so a child that runs them stays small (~15 MB)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # importing vpsweb_tasks would cost each child ~0.7 s and ~45 MB
    from vpsweb_tasks.context import ProcessContext

MB = 2**20


def echo(context: ProcessContext) -> dict[str, Any]:
    context.report_progress(0.5, "halfway", {"pid": os.getpid()})
    return {"pid": os.getpid(), "payload": context.payload, "attempt": context.attempt}


async def async_echo(context: ProcessContext) -> dict[str, Any]:
    await context.update_progress(0.5, "halfway (async)")
    return {"pid": os.getpid(), "payload": context.payload}


def allocate(context: ProcessContext) -> int:
    """Allocate ``mb`` MB, 8 MB at a time, keeping every block."""
    blocks = [bytearray(8 * MB) for _ in range(context.payload["mb"] // 8)]
    return len(blocks)


def sleep_forever(context: ProcessContext) -> None:
    """Report the child's pid, then never return (only a kill ends it)."""
    context.report_progress(0.1, "sleeping", {"pid": os.getpid()})
    while True:
        time.sleep(0.05)


def fail(context: ProcessContext) -> None:
    raise ValueError(f"bad input in the child: {context.payload.get('why', 'none')}")


class Unpicklable(Exception):
    def __init__(self, a: int, b: int) -> None:  # pickling keeps args; rebuilding fails
        super().__init__(f"{a} and {b}")


def fail_unpicklably(context: ProcessContext) -> None:
    raise Unpicklable(1, 2)


def not_json(context: ProcessContext) -> object:
    return {"when": object()}


def pid(context: ProcessContext) -> int:
    return os.getpid()


def sum_dependencies(context: ProcessContext) -> int:
    """The sum of what the tasks it depends on returned (a fan-in run in a child)."""
    return sum(int(value) for value in context.dependency_results.values())
