"""The garbage collector tuned for a process running many tasks at once.

With tens of thousands of tasks running, every full collection walks all their objects
(coroutines, anyio tasks and cancel scopes, contexts) and holds the event loop that long;
the collections are set off by short-lived objects that live past the youngest
generation (a report, a timer). :func:`tune_garbage_collector` takes the objects alive
after start-up (modules, classes, settings) out of every later collection
(``gc.freeze``) and lets the youngest generation grow larger before it is collected, so
fewer short-lived objects reach the oldest generation.

It changes the whole process, so the library never calls it on its own in an application
that embeds it: ``vpsweb-tasks worker`` and ``serve`` do (``background_tasks.gc_tuning``,
null: on in those commands, off elsewhere), and an embedding application may call it, or
set ``gc_tuning: true``, itself. See benchmarks/README.md for what it is worth.
"""

from __future__ import annotations

import gc

#: The youngest generation's threshold once tuned (Python's default is 700): young
#: collections stay short, and fewer objects that live about a second reach the oldest.
YOUNG_THRESHOLD = 10_000


def tune_garbage_collector(young_threshold: int = YOUNG_THRESHOLD) -> None:
    """Freeze the objects alive now (never scanned again; call it once start-up is done)
    and raise the youngest generation's threshold to ``young_threshold``. Process-wide."""
    if young_threshold < 1:
        raise ValueError(f"young_threshold must be at least 1, not {young_threshold}")
    gc.collect()  # what is garbage now is freed, not frozen
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, oldest)
