"""System resources from psutil.

``psutil.cpu_percent(None)`` measures since the previous call *from the same thread*, so
one :class:`PsutilSampler` is created per monitor and only ever called from the monitor's
sampling loop (never from pooled worker threads).
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from .models import ResourceSample

__all__ = ["PsutilSampler"]


class PsutilSampler:
    """Reads CPU, memory, the disk holding ``disk_path``, and this process's RSS."""

    def __init__(self, disk_path: str | os.PathLike[str] = ".") -> None:
        path = Path(disk_path).resolve()
        # The database file may not exist yet: measure the nearest existing folder.
        while not path.exists() and path.parent != path:
            path = path.parent
        self.disk_path = str(path)
        self._process = psutil.Process()
        psutil.cpu_percent(None)  # establish the baselines the next readings measure from
        self._process.cpu_percent(None)

    def sample(self, *, now: float, active_tasks: int = 0, queued_tasks: int = 0) -> ResourceSample:
        return ResourceSample(
            recorded_at=now,
            cpu_percent=float(psutil.cpu_percent(None)),
            memory_percent=float(psutil.virtual_memory().percent),
            disk_percent=float(psutil.disk_usage(self.disk_path).percent),
            process_rss_mb=self._process.memory_info().rss / (1024 * 1024),
            process_cpu_percent=float(self._process.cpu_percent(None)),
            active_tasks=active_tasks,
            queued_tasks=queued_tasks,
        )
