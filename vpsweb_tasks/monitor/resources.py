"""System resources: the :class:`Sampler` protocol, and :class:`PsutilSampler`.

``psutil.cpu_percent(None)`` measures since the previous call *from the same thread*, so
one :class:`PsutilSampler` is created per monitor and only ever called from the monitor's
sampling loop (never from pooled worker threads).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Protocol

import psutil

from ..models import ResourceSample

__all__ = ["PsutilSampler", "Sampler"]


class Sampler(Protocol):
    """Reads system resources (:class:`PsutilSampler`, or a fake in tests)."""

    def sample(self, *, now: float, active_tasks: int, queued_tasks: int) -> ResourceSample: ...


class PsutilSampler:
    """Reads CPU, memory, the disk holding ``disk_path``, and this process's RSS."""

    #: CPU readings over a shorter span than this are noise; the last good one is reused.
    min_cpu_span = 0.5

    def __init__(self, disk_path: str | os.PathLike[str] = ".") -> None:
        path = Path(disk_path).resolve()
        # The database file may not exist yet: measure the nearest existing folder.
        while not path.exists() and path.parent != path:
            path = path.parent
        self.disk_path = str(path)
        self._process = psutil.Process()
        psutil.cpu_percent(None)  # establish the baselines the next readings measure from
        self._process.cpu_percent(None)
        self._cpu_at = time.monotonic()
        self._cpu: tuple[float, float] | None = None
        self._disk_at: float | None = None
        self._disk = 0.0

    def _cpu_reading(self) -> tuple[float, float]:
        # The first call measures, however short its span (a made-up 0% would be reported
        # as real); later ones reuse the last reading until min_cpu_span has passed.
        if self._cpu is None or time.monotonic() - self._cpu_at >= self.min_cpu_span:
            self._cpu = (float(psutil.cpu_percent(None)), float(self._process.cpu_percent(None)))
            self._cpu_at = time.monotonic()
        return self._cpu

    def disk_percent(self, max_age: float = 0.0) -> float:
        """Use of the volume holding the database, percent: read again unless the last
        reading is younger than ``max_age`` seconds (a health check asks on every call)."""
        at = time.monotonic()
        if self._disk_at is None or at - self._disk_at >= max_age:
            self._disk = float(psutil.disk_usage(self.disk_path).percent)
            self._disk_at = at
        return self._disk

    def sample(self, *, now: float, active_tasks: int = 0, queued_tasks: int = 0) -> ResourceSample:
        system_cpu, process_cpu = self._cpu_reading()
        return ResourceSample(
            recorded_at=now,
            cpu_percent=system_cpu,
            memory_percent=float(psutil.virtual_memory().percent),
            disk_percent=self.disk_percent(),
            process_rss_mb=self._process.memory_info().rss / (1024 * 1024),
            process_cpu_percent=process_cpu,
            active_tasks=active_tasks,
            queued_tasks=queued_tasks,
        )
