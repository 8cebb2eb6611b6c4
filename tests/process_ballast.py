"""A task module whose import alone takes 48 MB: its child is over a 32 MB limit before
the task starts."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing vpsweb_tasks would cost each child ~0.7 s and ~45 MB
    from vpsweb_tasks.context import ProcessContext

BALLAST = bytearray(48 * 2**20)


def small(context: ProcessContext) -> int:
    return len(BALLAST)
