"""A fast path to SQLite's write lock between processes: an ``flock`` on a side file.

SQLite's own lock is what every write rests on (``BEGIN IMMEDIATE``), but a process that
finds it taken waits in SQLite's busy handler, which sleeps 1, 2, 5, 10 ms... between
looks: while another process writes, a waiter sleeps on long after the lock is free. So
each store's writer first takes an ``flock`` on ``<database>-writer`` around its write
transaction; the kernel wakes a waiter the moment the holder lets go, and its
``BEGIN IMMEDIATE`` then finds SQLite's lock free.

The side lock is only a fast path, never needed for correctness:

* a process that dies holding it loses it (the kernel releases a dead process's flocks);
* a wait for it is bounded (``wait``): a process stuck holding it costs the others one
  bounded wait, after which they write through plain ``BEGIN IMMEDIATE`` and SQLite's
  ``busy_timeout``, without waiting for it again until its holder lets go;
* a writer that does not take it (an older version, the sqlite3 shell) is waited for by
  SQLite's busy handler, as before.

Nothing waits for the side lock while holding SQLite's, so the two cannot deadlock.

A blocking ``flock`` cannot time out, so a contended wait runs on a helper thread while
the database thread waits, with a timeout, for the helper to say it got the lock. A
wait given up on is left to the helper, which lets the lock go as soon as it gets it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading

__all__ = ["WriteHandoff"]

#: Longest a writer waits for the side lock before it falls back to SQLite's busy
#: handler (capped by ``busy_timeout``): longer than any transaction we commit.
HANDOFF_WAIT = 1.0


class WriteHandoff:
    """The side lock of one store's writer (its database thread); see the module
    docstring. ``acquire()`` before ``BEGIN IMMEDIATE``; ``release()`` after the
    transaction ends, if ``acquire()`` returned True."""

    def __init__(self, fd: int, *, wait: float) -> None:
        self._fd = fd
        self._wait = wait
        self._state = threading.Lock()
        self._request = threading.Event()
        self._granted = threading.Event()
        self._waiting = False  # the helper is (or is about to be) blocked in flock
        self._abandoned = False  # ... for a wait the database thread gave up on
        self._closed = False
        self._helper: threading.Thread | None = None
        self.timeouts = 0

    @classmethod
    def open(cls, database: str, *, wait: float) -> WriteHandoff | None:
        """The hand-off of the database at ``database``, or None where its side file
        cannot be opened (a read-only folder): writes then wait in SQLite alone."""
        path = database + "-writer"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                return None
        return cls(fd, wait=wait)

    def acquire(self) -> bool:
        """Take the side lock, waiting at most ``wait`` seconds: True if taken."""
        with self._state:
            if self._waiting:  # an earlier wait was given up on and its holder is stuck
                return False
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        except OSError:  # no flock here (ENOLCK): SQLite's lock alone
            return False
        with self._state:
            self._waiting = True
            self._granted.clear()
        self._start_helper()
        self._request.set()
        if self._granted.wait(self._wait):
            return True
        with self._state:
            if self._granted.is_set():  # got it just now
                return True
            self._abandoned = True
            self.timeouts += 1
            return False

    def release(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the side file (and end the helper, which a blocked wait may outlive
        until its flock returns: it is a daemon)."""
        with self._state:
            self._closed = True
            waiting = self._waiting
        self._request.set()
        if not waiting:
            if self._helper is not None:
                self._helper.join()
            os.close(self._fd)
        # else the helper closes it when its flock returns

    def _start_helper(self) -> None:
        if self._helper is None:
            self._helper = threading.Thread(
                target=self._help, name="vpsweb-tasks-handoff", daemon=True
            )
            self._helper.start()

    def _help(self) -> None:
        while True:
            self._request.wait()
            self._request.clear()
            with self._state:
                if self._closed and not self._waiting:
                    return
            # An error (ENOLCK) grants nothing, harmlessly: SQLite's lock is the real one.
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            with self._state:
                self._waiting = False
                if self._abandoned or self._closed:
                    self._abandoned = False
                    with contextlib.suppress(OSError):
                        fcntl.flock(self._fd, fcntl.LOCK_UN)
                    if self._closed:
                        os.close(self._fd)
                        return
                else:
                    self._granted.set()
