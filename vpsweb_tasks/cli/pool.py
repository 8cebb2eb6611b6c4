"""The worker pool: ``vpsweb-tasks worker --processes N``.

The process started is a supervisor: it runs no tasks and opens no database. It starts
N children, each a ``vpsweb-tasks worker --processes 1`` of its own (a fresh interpreter,
its own :class:`~vpsweb_tasks.manager.TaskManager` and worker id, so leases, fencing and
reaping work between them as between any worker processes), and keeps them running:

* **Ready.** Once every child has printed its ``READY <worker id>`` line, the pool prints
  one line, ``READY <id> <id> ...`` (the children's worker ids, in order).
* **A child that dies** (any exit the pool did not ask for) is replaced at once; the pool
  prints ``REPLACED <old id> <new id>`` when the new child is ready. Its tasks are
  recovered by the usual reaping of dead workers on this host (the worker row names its
  pid): the surviving children are sent ``SIGUSR1``, which makes a worker reap now rather
  than at its next periodic look, and the new child reaps as it starts. A child that
  keeps dying soon after its start is restarted after a growing delay, so a crash loop
  does not spin.
* **A child that never gets ready** (it exits before its ``READY`` line: a bad
  ``--import``, a config it cannot use) stops the pool when it happens at start-up, and
  after :data:`BOOT_FAILURES` such children of one slot in a row later on: the pool
  drains the other children and exits with the child's status, naming it on stderr.
* **SIGTERM or SIGINT** to the pool is passed on to every child as SIGTERM: each drains
  as a single worker does (running tasks get ``shutdown_grace_period``, then go back to
  the queue), and the pool exits 0 once all have. A second signal is passed on too: the
  hard stop of a single worker. The children run in their own session, so a Ctrl-C in a
  terminal reaches them only through the pool (once, not twice).
* **The pool killed** (SIGKILL, out of memory): each child has asked Linux to signal it
  when its parent dies (``PR_SET_PDEATHSIG``, see :func:`die_with_parent`), and drains
  and exits on that signal rather than running on unsupervised.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ["BOOT_FAILURES", "PARENT_DIED", "WorkerPool", "die_with_parent"]

logger = logging.getLogger("vpsweb_tasks.cli")

#: Children of one slot in a row that exit before they are ready, after which the pool
#: gives up (at start-up, the first one stops it).
BOOT_FAILURES = 5
#: A child that dies within this many seconds of its start died quickly: the next one of
#: its slot waits (:func:`restart_delay`) before it starts.
QUICK_DEATH_SECONDS = 10.0

_FORWARDED = (signal.SIGINT, signal.SIGTERM)


def restart_delay(quick_deaths: int) -> float:
    """Seconds before a slot's next child starts, after so many quick deaths in a row:
    the first restart is at once, then 0.5 s doubling up to 30 s."""
    if quick_deaths <= 1:
        return 0.0
    return float(min(0.5 * 2 ** (quick_deaths - 2), 30.0))


#: The signal a pool's child is sent when the pool dies: a worker drains on it as on its
#: first SIGTERM. Not SIGTERM itself: the kernel sends it again each time the orphan is
#: handed on to another of the dead pool's threads, and a second SIGTERM is the hard stop.
PARENT_DIED = signal.SIGUSR2


def die_with_parent(parent: int) -> None:
    """Have this process sent :data:`PARENT_DIED` when its parent, the pool, dies, even
    by SIGKILL: Linux's ``prctl(PR_SET_PDEATHSIG)``, chosen over a pipe the child would
    watch because the kernel delivers it with no thread or loop task in the child.
    Elsewhere this does nothing, and children outlive a killed pool."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, int(PARENT_DIED), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:  # the pool died before the call
        os.kill(os.getpid(), signal.SIGTERM)


class PoolFailed(Exception):
    """A child could not be started: the pool stops, with this child's exit status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Slot:
    index: int
    process: anyio.abc.Process | None = None
    worker_id: str | None = None
    quick_deaths: int = 0
    boot_failures: int = 0


class WorkerPool:
    """N supervised ``vpsweb-tasks worker`` children; ``command(i)`` is child i's
    command line. :meth:`run` returns the pool's exit status."""

    def __init__(
        self,
        command: Callable[[int], Sequence[str]],
        size: int,
        *,
        print_line: Callable[[str], None] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("a pool has at least one child")
        self.command = command
        self.slots = [_Slot(index) for index in range(size)]
        self._print = print_line or _print_line
        self._stopping = False
        self._stop = anyio.Event()
        self._announced = False
        self._failure: PoolFailed | None = None
        self._unclean: list[str] = []

    async def run(self) -> int:
        with anyio.open_signal_receiver(*_FORWARDED) as signals:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pass_signals_on, signals)
                async with anyio.create_task_group() as children:
                    for slot in self.slots:
                        children.start_soon(self._keep, slot)
                tg.cancel_scope.cancel()
        if self._failure is not None:
            print(f"vpsweb-tasks worker: {self._failure}", file=sys.stderr, flush=True)
            return self._failure.status
        if self._unclean:
            print(f"vpsweb-tasks worker: {'; '.join(self._unclean)}", file=sys.stderr, flush=True)
            return 1
        return 0

    # --- stopping ----------------------------------------------------------------------------

    async def _pass_signals_on(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if self._stopping:
                logger.warning("%s again: stopping the children now", name)
            else:
                logger.info("%s: draining %d worker processes", name, len(self.slots))
            self._begin_stop()

    def _begin_stop(self) -> None:
        """Ask every child to drain (again: to stop now)."""
        self._stopping = True
        self._stop.set()
        for slot in self.slots:
            _terminate(slot.process)

    def _fail(self, failure: PoolFailed) -> None:
        if self._failure is None:
            self._failure = failure
        if not self._stopping:
            self._begin_stop()

    # --- one slot ------------------------------------------------------------------------

    async def _keep(self, slot: _Slot) -> None:
        """Run the slot's child, and its replacements, until the pool stops."""
        previous: str | None = None  # the worker id of the last child that got ready
        while not self._stopping:
            previous = slot.worker_id or previous
            started = time.monotonic()
            process = await anyio.open_process(
                [*self.command(slot.index)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=None,
                start_new_session=True,  # signals reach it through the pool only
            )
            slot.process, slot.worker_id = process, None
            if self._stopping:  # asked to stop while it was starting
                _terminate(process)
            async with process, anyio.create_task_group() as reading:
                read = anyio.Event()
                reading.start_soon(self._read, slot, process, previous, read)
                status = await process.wait()
                # Its last lines are still read, unless a process it left behind holds
                # the pipe open.
                with anyio.move_on_after(1.0):
                    await read.wait()
                reading.cancel_scope.cancel()
            worker_id, slot.process = slot.worker_id, None
            if self._stopping:
                # -SIGTERM: stopped before it could drain, at its start, running nothing.
                if status not in (0, -signal.SIGTERM):
                    self._unclean.append(f"child {slot.index} {_described(status)}")
                return
            self._died(slot, status, worker_id, time.monotonic() - started)
            with anyio.move_on_after(restart_delay(slot.quick_deaths)):
                await self._stop.wait()

    async def _read(
        self, slot: _Slot, process: anyio.abc.Process, previous: str | None, read: anyio.Event
    ) -> None:
        """The child's ``READY`` line, then whatever else it prints (its tasks' own prints),
        passed on to the pool's stdout."""
        assert process.stdout is not None
        lines = BufferedByteReceiveStream(process.stdout)
        while (line := await _next_line(lines)) is not None:
            word, _, worker_id = line.partition(" ")
            if word == "READY" and slot.worker_id is None:
                slot.worker_id, slot.boot_failures = worker_id.strip(), 0
                self._ready(slot, previous)
            else:
                self._print(line.rstrip("\n"))
        read.set()

    def _ready(self, slot: _Slot, previous: str | None) -> None:
        if self._announced:
            self._print(f"REPLACED {previous} {slot.worker_id}")
        elif all(each.worker_id is not None for each in self.slots):
            self._announced = True
            self._print("READY " + " ".join(str(each.worker_id) for each in self.slots))

    def _died(self, slot: _Slot, status: int, worker_id: str | None, lived: float) -> None:
        code = _described(status)
        if worker_id is None:
            slot.boot_failures += 1
            if not self._announced:
                self._fail(
                    PoolFailed(
                        _status_of(status),
                        f"child {slot.index} {code} before it was ready; stopping the pool",
                    )
                )
                return
            if slot.boot_failures >= BOOT_FAILURES:
                self._fail(
                    PoolFailed(
                        _status_of(status),
                        f"child {slot.index} {code} before it was ready,"
                        f" {slot.boot_failures} times in a row; stopping the pool",
                    )
                )
                return
        slot.quick_deaths = slot.quick_deaths + 1 if lived < QUICK_DEATH_SECONDS else 1
        delay = restart_delay(slot.quick_deaths)
        logger.warning(
            "child %d (worker %s) %s; starting another%s",
            slot.index,
            worker_id or "not ready",
            code,
            f" in {delay:g}s" if delay else "",
        )
        if worker_id is not None:
            self._tell_survivors(slot)

    def _tell_survivors(self, dead: _Slot) -> None:
        """The other children look for dead workers now (the one just gone is reaped,
        its process waited for), not at their next periodic look."""
        for slot in self.slots:
            if slot is not dead and slot.worker_id is not None and slot.process is not None:
                _send(slot.process, signal.SIGUSR1)


async def _next_line(lines: BufferedByteReceiveStream) -> str | None:
    try:
        return (await lines.receive_until(b"\n", 1 << 20)).decode(errors="replace")
    except (anyio.IncompleteRead, anyio.EndOfStream, anyio.DelimiterNotFound):
        return None


def _print_line(line: str) -> None:
    print(line, flush=True)


def _terminate(process: anyio.abc.Process | None) -> None:
    if process is not None:
        _send(process, signal.SIGTERM)


def _send(process: anyio.abc.Process, signum: signal.Signals) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):  # it just ended
            process.send_signal(signum)


def _described(status: int) -> str:
    if status < 0:
        return f"was killed by {signal.Signals(-status).name} (exit status {status})"
    return f"exited with status {status}"


def _status_of(status: int) -> int:
    """The pool's exit status for a child's: the same when it is an error status, else 1."""
    return status if 0 < status < 256 else 1
