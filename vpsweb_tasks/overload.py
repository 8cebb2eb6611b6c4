"""Overload control: whether this worker process should stop taking tasks for a while.

Overload is about this worker process (``background_tasks`` holds its resource limits):
its resident memory against ``max_memory_mb`` and its CPU, as a share of the whole
machine, against ``max_cpu_percent``, each scaled by ``overload_threshold``. A machine that
is busy with other work does not pause the queue (that shows as the system CPU alert of
``system_resources`` instead).

A paused worker resumes only once its load falls below :data:`RESUME_FRACTION` of the
level that paused it, so a load hovering at the level does not switch dispatch on and off
at every sample.
"""

from __future__ import annotations

from .config import BackgroundTaskSettings
from .models import ResourceSample

__all__ = ["RESUME_FRACTION", "OverloadControl"]

#: Overload ends when load falls below this fraction of the level that started it.
RESUME_FRACTION = 0.95


class OverloadControl:
    """Decides, from resource samples, whether dispatch should pause (see the module
    docstring). It holds no state: the caller says whether dispatch is paused now."""

    def __init__(self, settings: BackgroundTaskSettings) -> None:
        self.settings = settings

    @property
    def enabled(self) -> bool:
        """``pause_on_overload``: when false, overload never pauses dispatch."""
        return self.settings.pause_on_overload

    def pause_reason(
        self, sample: ResourceSample, process_cpu: float | None, *, overloaded: bool
    ) -> str | None:
        """Why dispatch should be paused now, or None when it should run.

        ``process_cpu`` is this process's CPU as a percentage of the whole machine (the
        monitor's smoothed mean; None: not measured yet), ``overloaded`` whether dispatch
        is paused for overload now.
        """
        tasks = self.settings
        memory_limit = tasks.overload_threshold * tasks.max_memory_mb
        cpu_limit = tasks.overload_threshold * tasks.max_cpu_percent
        if overloaded:
            memory_limit *= RESUME_FRACTION
            cpu_limit *= RESUME_FRACTION
        reasons = []
        if sample.process_rss_mb > memory_limit:
            reasons.append(
                f"process memory {sample.process_rss_mb:.0f} MB is above"
                f" {memory_limit:.0f} MB ({tasks.overload_threshold:.0%} of max_memory_mb)"
            )
        cpu = process_cpu or 0.0
        if cpu > cpu_limit:
            reasons.append(
                f"process CPU {cpu:.0f}% is above {cpu_limit:.0f}%"
                f" ({tasks.overload_threshold:.0%} of max_cpu_percent)"
            )
        return "overloaded: " + "; ".join(reasons) if reasons else None
