"""Overload control on its own: the pause levels, the exact reasons, and the hysteresis."""

from __future__ import annotations

import ast
import inspect

from hypothesis import given
from hypothesis import strategies as st

from vpsweb_tasks import overload
from vpsweb_tasks.config import BackgroundTaskSettings
from vpsweb_tasks.models import ResourceSample
from vpsweb_tasks.overload import RESUME_FRACTION, OverloadControl

CONTROL = OverloadControl(BackgroundTaskSettings())  # 512 MB, 80% CPU, threshold 0.9


def rss(mb: float) -> ResourceSample:
    return ResourceSample(
        recorded_at=0.0,
        cpu_percent=10.0,
        memory_percent=30.0,
        disk_percent=40.0,
        process_rss_mb=mb,
    )


def test_a_calm_process_runs() -> None:
    assert CONTROL.enabled
    assert CONTROL.pause_reason(rss(50.0), 5.0, overloaded=False) is None
    assert CONTROL.pause_reason(rss(50.0), None, overloaded=False) is None


def test_memory_and_cpu_each_pause_with_their_reason() -> None:
    assert CONTROL.pause_reason(rss(470.0), 5.0, overloaded=False) == (
        "overloaded: process memory 470 MB is above 461 MB (90% of max_memory_mb)"
    )
    assert CONTROL.pause_reason(rss(50.0), 75.0, overloaded=False) == (
        "overloaded: process CPU 75% is above 72% (90% of max_cpu_percent)"
    )
    assert CONTROL.pause_reason(rss(470.0), 75.0, overloaded=False) == (
        "overloaded: process memory 470 MB is above 461 MB (90% of max_memory_mb);"
        " process CPU 75% is above 72% (90% of max_cpu_percent)"
    )


def test_a_paused_process_resumes_only_well_below_the_pause_level() -> None:
    assert RESUME_FRACTION == 0.95
    # 450 MB is below the pause level (460.8 MB) but not below 95% of it (437.8 MB).
    assert CONTROL.pause_reason(rss(450.0), 5.0, overloaded=False) is None
    assert CONTROL.pause_reason(rss(450.0), 5.0, overloaded=True) == (
        "overloaded: process memory 450 MB is above 438 MB (90% of max_memory_mb)"
    )
    assert CONTROL.pause_reason(rss(430.0), 5.0, overloaded=True) is None
    assert CONTROL.pause_reason(rss(50.0), 70.0, overloaded=True) is not None  # above 68.4%
    assert CONTROL.pause_reason(rss(50.0), 68.0, overloaded=True) is None


def test_the_levels_follow_the_settings() -> None:
    control = OverloadControl(
        BackgroundTaskSettings(max_memory_mb=1000, max_cpu_percent=50, overload_threshold=0.5)
    )
    assert control.pause_reason(rss(600.0), 10.0, overloaded=False) == (
        "overloaded: process memory 600 MB is above 500 MB (50% of max_memory_mb)"
    )
    assert control.pause_reason(rss(400.0), 30.0, overloaded=False) == (
        "overloaded: process CPU 30% is above 25% (50% of max_cpu_percent)"
    )
    assert not OverloadControl(BackgroundTaskSettings(pause_on_overload=False)).enabled


@given(
    memory=st.floats(min_value=0, max_value=2000),
    cpu=st.none() | st.floats(min_value=0, max_value=100),
)
def test_a_load_that_pauses_a_running_process_keeps_a_paused_one_paused(
    memory: float, cpu: float | None
) -> None:
    if CONTROL.pause_reason(rss(memory), cpu, overloaded=False) is not None:
        assert CONTROL.pause_reason(rss(memory), cpu, overloaded=True) is not None


def test_overload_knows_neither_the_manager_the_queue_nor_the_monitor() -> None:
    imported: set[str] = set()
    for node in ast.walk(ast.parse(inspect.getsource(overload))):
        if isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert imported.isdisjoint({".manager", ".queue", ".monitor"}), imported
