"""Schedules: definitions and their errors, when ticks fall (DST included), which due
ticks fire, and the manager's schedules with a fake clock.

The manager tests run with workers off (``background_tasks.enabled: false``: no
scheduler loop) and fire with ``fire_due_schedules()`` after moving the clock, so each
step is deterministic. Exactly once across real processes is tests/test_schedules_mp.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest
import yaml

from tests.conftest import FakeClock
from vpsweb_tasks import TaskContext, TaskManager, TaskStatus, load_config
from vpsweb_tasks.config import Settings
from vpsweb_tasks.errors import (
    ConfigError,
    DuplicateScheduleError,
    InvalidScheduleError,
    ManagerNotRunningError,
    ScheduleNotFoundError,
    UnknownTaskTypeError,
)
from vpsweb_tasks.schedules import (
    MAX_CATCH_UP,
    ScheduleDefinition,
    cadence_of,
    define,
    plan,
)
from vpsweb_tasks.storage import logic
from vpsweb_tasks.validation import MAX_JSON_BYTES

pytestmark = pytest.mark.anyio

WARSAW = ZoneInfo("Europe/Warsaw")


def at(*args: int, tz: ZoneInfo = WARSAW) -> float:
    return datetime(*args, tzinfo=tz).timestamp()  # type: ignore[misc]


def local(timestamp: float, tz: ZoneInfo = WARSAW) -> str:
    return datetime.fromtimestamp(timestamp, tz).isoformat()


# --- definitions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"cron": "* * *"}, "cron", "5 fields"),
        ({"cron": "0 0 * * * *"}, "cron", "5 fields"),  # cronsim's seconds field: not ours
        ({"cron": "61 * * * *"}, "cron", "Bad minute"),
        ({"cron": "0 0 30 2 *"}, "cron", "day"),
        ({"every": 0}, "every", "greater than or equal to 0.01"),
        ({"every": -5}, "every", "greater than or equal to 0.01"),
        ({"every": timedelta(seconds=-1)}, "every", "greater than or equal to 0.01"),
        ({"every": 1e300}, "every", "less than"),
        ({"every": float("inf")}, "every", "less than"),
        ({}, "every", "one of cron or every is required"),
        ({"cron": "* * * * *", "every": 5}, "every", "not both"),
        ({"every": 5, "timezone": "Mars/Olympus"}, "timezone", "unknown timezone"),
        ({"every": 5, "timezone": "Europe"}, "timezone", "unknown timezone"),
        ({"every": 5, "timezone": "/etc/passwd"}, "timezone", "unknown timezone"),
        ({"every": 5, "priority": "urgent"}, "priority", "low"),
        ({"every": 5, "missed": "all"}, "missed", "latest"),
        ({"every": 5, "payload": {"x": float("nan")}}, "payload", "JSON"),
        ({"every": 5, "task_type": "no spaces"}, "task_type", "pattern"),
    ],
)
def test_an_invalid_definition_names_its_field(
    fields: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(InvalidScheduleError) as raised:
        define(**{"task_type": "work", **fields})
    assert raised.value.field == field
    assert words in str(raised.value)


def test_a_payload_has_a_tasks_bounds() -> None:
    with pytest.raises(InvalidScheduleError) as raised:
        define(task_type="work", every=5, payload={"x": "y" * MAX_JSON_BYTES})
    assert raised.value.field == "payload"
    assert str(MAX_JSON_BYTES) in str(raised.value)


def test_a_definition_takes_a_timedelta_and_tidies_its_cron() -> None:
    assert define(task_type="work", every=timedelta(minutes=2)).every == 120.0
    assert define(task_type="work", cron=" 0  3 * * MON ").cron == "0 3 * * MON"


# --- when ticks fall --------------------------------------------------------------------------


def test_interval_ticks_are_whole_steps_from_the_anchor() -> None:
    ticks = cadence_of(None, 0.25, "UTC", anchor=1000.0)
    assert ticks.after(1000.0) == 1000.25
    assert ticks.after(1000.1) == 1000.25
    assert ticks.after(1000.25) == 1000.5
    assert ticks.at_or_before(1000.6) == 1000.5
    assert ticks.at_or_before(1000.5) == 1000.5
    assert ticks.at_or_before(999.0) is None
    # Many steps on, still exactly anchor + k * every.
    assert ticks.after(1000.0 + 0.25 * 1_000_001 - 0.01) == 1000.0 + 0.25 * 1_000_001


def test_cron_ticks_are_read_in_the_schedules_timezone() -> None:
    daily = cadence_of("0 3 * * *", None, "Europe/Warsaw", anchor=0.0)
    winter = at(2026, 1, 10, 12, 0)
    assert local(daily.after(winter)) == "2026-01-11T03:00:00+01:00"
    summer = at(2026, 7, 10, 12, 0)
    assert local(daily.after(summer)) == "2026-07-11T03:00:00+02:00"
    assert local(daily.at_or_before(summer) or 0) == "2026-07-10T03:00:00+02:00"
    utc = cadence_of("0 3 * * *", None, "UTC", anchor=0.0)
    assert datetime.fromtimestamp(utc.after(summer), UTC).hour == 3


def test_dst_changes_behave_as_cronsim_documents() -> None:
    """cronsim follows Debian cron: a job at a fixed time that falls in the hour skipped
    in spring runs when the clock jumps; one in the hour repeated in autumn runs once. Jobs
    that run more often than hourly follow the wall clock through the change."""
    daily = cadence_of("30 2 * * *", None, "Europe/Warsaw", anchor=0.0)
    # 2026-03-29: 02:00 -> 03:00 in Warsaw. 02:30 does not exist: it runs at 03:00.
    spring = daily.after(at(2026, 3, 29, 0, 0))
    assert local(spring) == "2026-03-29T03:00:00+02:00"
    assert local(daily.after(spring)) == "2026-03-30T02:30:00+02:00"
    # 2026-10-25: 03:00 -> 02:00. 02:30 happens twice: it runs once, the first time.
    autumn = daily.after(at(2026, 10, 25, 0, 0))
    assert local(autumn) == "2026-10-25T02:30:00+02:00"
    assert local(daily.after(autumn)) == "2026-10-26T02:30:00+01:00"
    # Every half hour: the repeated hour is run through twice, by the wall clock.
    half = cadence_of("*/30 * * * *", None, "Europe/Warsaw", anchor=0.0)
    tick, seen = at(2026, 10, 25, 1, 45), []
    for _ in range(5):
        tick = half.after(tick)
        seen.append(local(tick))
    assert seen == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T02:30:00+01:00",
        "2026-10-25T03:00:00+01:00",
    ]
    # ... and the skipped hour is skipped.
    tick, seen = at(2026, 3, 29, 1, 15), []
    for _ in range(3):
        tick = half.after(tick)
        seen.append(local(tick))
    assert seen == [
        "2026-03-29T01:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-29T03:30:00+02:00",
    ]


# --- which due ticks fire ---------------------------------------------------------------------


def test_plan_of_a_schedule_not_due_fires_nothing() -> None:
    ticks = cadence_of(None, 10, "UTC", anchor=0.0)
    assert plan(ticks, 10.0, now=9.9, grace=5, missed="latest").ticks == ()


def test_plan_fires_every_tick_on_time_and_the_policy_decides_the_missed() -> None:
    ticks = cadence_of(None, 10, "UTC", anchor=0.0)
    on_time = plan(ticks, 10.0, now=31.0, grace=30, missed="skip")
    assert (on_time.ticks, on_time.next_run_at, on_time.missed_since) == ((10, 20, 30), 40, None)
    late = plan(ticks, 10.0, now=1005.0, grace=30, missed="latest")
    # 980..1000 are within the grace and fire; the 97 before them were missed.
    assert (late.ticks, late.next_run_at, late.missed_since) == ((980, 990, 1000), 1010, 10)
    assert plan(ticks, 10.0, now=1005.0, grace=30, missed="skip").ticks == (980, 990, 1000)
    long_down = plan(ticks, 10.0, now=1005.0, grace=3, missed="latest")
    assert (long_down.ticks, long_down.missed_since) == ((1000,), 10)
    assert plan(ticks, 10.0, now=1005.0, grace=3, missed="skip").ticks == ()


def test_plan_fires_at_most_max_catch_up_ticks() -> None:
    ticks = cadence_of(None, 0.01, "UTC", anchor=0.0)
    many = plan(ticks, 0.01, now=5.0, grace=10, missed="latest")
    assert len(many.ticks) == MAX_CATCH_UP
    assert many.ticks[-1] == pytest.approx(5.0)
    assert many.missed_since == 0.01


# --- the manager ------------------------------------------------------------------------------


async def noop(context: TaskContext) -> str:
    return context.task_id


def api_only(settings_factory: Callable[..., Settings], **background: Any) -> Settings:
    return settings_factory(background_tasks={"enabled": False, **background})


@pytest.fixture
def make_manager(
    settings_factory: Callable[..., Settings], clock: FakeClock
) -> Callable[..., TaskManager]:
    def make(**background: Any) -> TaskManager:
        manager = TaskManager(api_only(settings_factory, **background), clock=clock)
        manager.register("work", noop)
        return manager

    return make


async def test_schedules_defined_in_code_fire_at_their_ticks(
    make_manager: Callable[..., TaskManager], clock: FakeClock
) -> None:
    manager = make_manager()
    manager.schedule("often", task_type="work", every=60, payload={"n": 1}, priority="high")

    @manager.scheduled(cron="*/5 * * * *")
    async def five(context: TaskContext) -> None: ...

    async with manager:
        names = {s.name: s for s in await manager.list_schedules()}
        assert sorted(names) == ["cleanup", "five", "often"]
        assert (names["often"].origin, names["five"].origin) == ("code", "code")
        assert names["five"].definition.task_type == "five"
        clock.advance(60)
        [firing] = await manager.fire_due_schedules()
        [task] = firing.tasks
        record = await manager.get_task(task.id)
        assert (record.task_type, record.payload) == ("work", {"n": 1})
        assert record.priority.value == "high"
        assert record.metadata["schedule"] == "often"
        assert record.status is TaskStatus.PENDING
        clock.advance(240)  # T0 is a whole hour: */5 is due at T0 + 300
        firings = {f.schedule: f for f in await manager.fire_due_schedules()}
        assert sorted(firings) == ["five", "often"]
        # often's ticks at T0 + 120..240 were missed (more than schedule_grace late):
        # the one on time at T0 + 300 fires, the others do not flood the queue.
        assert [t.tick_at - clock.now for t in firings["often"].ticks] == [0]
        assert firings["often"].missed_since == clock.now - 180


async def test_schedules_from_yaml(
    tmp_path: Path, settings_factory: Callable[..., Settings], clock: FakeClock
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "storage": {"sqlite_path": str(tmp_path / "yaml.db")},
                "logging": {"file": None},
                "background_tasks": {"enabled": False},
                "schedules": {
                    "nightly": {
                        "task_type": "work",
                        "cron": "0 3 * * *",
                        "timezone": "Europe/Warsaw",
                        "payload": {"report": "daily"},
                        "priority": "low",
                    },
                    "paused": {"task_type": "work", "every": 30, "enabled": False},
                },
            }
        )
    )
    manager = TaskManager(load_config(path), clock=clock)
    manager.register("work", noop)
    async with manager:
        nightly = await manager.get_schedule("nightly")
        assert nightly.origin == "config"
        assert local(nightly.next_run_at) == "2027-01-16T03:00:00+01:00"
        assert nightly.definition.payload == {"report": "daily"}
        assert (await manager.get_schedule("paused")).enabled is False


async def test_a_yaml_schedule_of_an_unknown_task_type_stops_the_start(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(
        background_tasks={"enabled": False},
        schedules={"nightly": {"task_type": "report", "cron": "0 3 * * *"}},
    )
    with pytest.raises(ConfigError, match=r"schedules\.nightly\.task_type: unknown task type"):
        async with TaskManager(settings):
            pass


async def test_bad_schedules_in_code_raise_before_anything_is_stored(
    make_manager: Callable[..., TaskManager],
) -> None:
    manager = make_manager()
    manager.schedule("often", task_type="work", every=60)
    with pytest.raises(DuplicateScheduleError) as duplicate:
        manager.schedule("often", task_type="work", every=30)
    assert duplicate.value.field == "name"
    with pytest.raises(InvalidScheduleError) as bad_name:
        manager.schedule("not/a name", task_type="work", every=30)
    assert bad_name.value.field == "name"
    with pytest.raises(InvalidScheduleError) as bad_cron:
        manager.schedule("bad", task_type="work", cron="every day")
    assert bad_cron.value.field == "cron"
    manager.schedule("unknown", task_type="report", every=30)
    with pytest.raises(UnknownTaskTypeError):
        async with manager:
            pass
    async with TaskManager(manager.settings, store=manager.store) as other:
        other.register("work", noop)
        assert [s.name for s in await other.list_schedules()] == ["cleanup"]


async def test_schedules_at_runtime(
    make_manager: Callable[..., TaskManager], clock: FakeClock
) -> None:
    async with make_manager() as manager:
        added = await manager.add_schedule("often", task_type="work", every=10)
        assert (added.origin, added.next_run_at) == ("api", clock.now + 10)
        same = ScheduleDefinition(task_type="work", every=5)
        with pytest.raises(DuplicateScheduleError):
            await manager.add_schedule("often", same)
        with pytest.raises(UnknownTaskTypeError):
            await manager.add_schedule("other", task_type="report", every=5)
        with pytest.raises(InvalidScheduleError) as raised:
            await manager.add_schedule("other", task_type="work", every=5, timezone="Nowhere")
        assert raised.value.field == "timezone"
        assert [s.name for s in await manager.list_schedules()] == ["cleanup", "often"]

        assert (await manager.pause_schedule("often")).enabled is False
        clock.advance(100)
        assert await manager.fire_due_schedules() == []
        resumed = await manager.resume_schedule("often")
        assert (resumed.enabled, resumed.next_run_at) == (True, clock.now + 10)
        await manager.delete_schedule("often")
        for call in (manager.get_schedule, manager.pause_schedule, manager.delete_schedule):
            with pytest.raises(ScheduleNotFoundError):
                await call("often")
    with pytest.raises(ManagerNotRunningError):
        await manager.add_schedule("late", task_type="work", every=5)


async def test_a_restart_keeps_a_pause_and_brings_back_a_deleted_definition(
    make_manager: Callable[..., TaskManager], clock: FakeClock
) -> None:
    first = make_manager()
    first.schedule("paused", task_type="work", every=60)
    first.schedule("deleted", task_type="work", every=60)
    async with first:
        await first.pause_schedule("paused")
        await first.delete_schedule("deleted")
    second = make_manager()
    second.schedule("paused", task_type="work", every=60)
    second.schedule("deleted", task_type="work", every=60)
    async with second:
        schedules = {s.name: s for s in await second.list_schedules()}
        assert schedules["paused"].enabled is False
        assert schedules["deleted"].enabled is True
    third = make_manager()
    third.schedule("paused", task_type="work", every=120)  # changed: replaced, enabled
    async with third:
        assert (await third.get_schedule("paused")).enabled is True


async def test_missed_ticks_after_a_downtime_run_once(
    make_manager: Callable[..., TaskManager], clock: FakeClock
) -> None:
    manager = make_manager()
    manager.schedule("latest", task_type="work", every=60)
    manager.schedule("skip", task_type="work", every=60, missed="skip")
    async with manager:
        pass
    clock.advance(7 * 24 * 3600 + 30)  # a week with no process up
    again = make_manager()
    again.schedule("latest", task_type="work", every=60)
    again.schedule("skip", task_type="work", every=60, missed="skip")
    async with again:
        fired = {f.schedule: len(f.tasks) for f in await again.fire_due_schedules()}
        assert fired == {"latest": 1, "skip": 0, "cleanup": 1}
        assert (await again.queue_status()).pending == 2


async def test_cleanup_is_a_schedule_of_cleanup_interval(
    make_manager: Callable[..., TaskManager], clock: FakeClock
) -> None:
    async with make_manager(cleanup_interval=600) as manager:
        cleanup = await manager.get_schedule("cleanup")
        assert (cleanup.origin, cleanup.definition.every) == ("builtin", 600)
        assert cleanup.definition.task_type == "cleanup"
        clock.advance(600)
        [firing] = await manager.fire_due_schedules()
        [task] = firing.tasks
        assert (await manager.get_task(task.id)).task_type == "cleanup"
    replaced = make_manager()
    replaced.schedule("cleanup", task_type="cleanup", cron="0 3 * * *")
    async with replaced:
        cleanup = await replaced.get_schedule("cleanup")
        assert (cleanup.origin, cleanup.definition.cron) == ("code", "0 3 * * *")


async def test_a_worker_fires_its_schedules_and_runs_their_tasks(
    settings_factory: Callable[..., Settings],
) -> None:
    """The scheduler loop with the real clock: a schedule added at runtime wakes it."""
    ran: list[str] = []
    done = anyio.Event()
    manager = TaskManager(settings_factory(background_tasks={"schedule_check_interval": 30}))

    @manager.task("tick")
    async def tick(context: TaskContext) -> None:
        ran.append(context.task_id)
        if len(ran) == 3:
            done.set()

    async with manager:
        await manager.add_schedule("fast", task_type="tick", every=0.1)
        with anyio.fail_after(10):
            await done.wait()
        await manager.pause_schedule("fast")
        ticks = await manager.store.run(logic.schedule_ticks("fast"))
    assert [t.task_id for t in ticks][:3] == ran
    steps = [round(b.tick_at - a.tick_at, 6) for a, b in itertools.pairwise(ticks)]
    assert set(steps) == {0.1}
