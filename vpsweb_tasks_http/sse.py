"""The event hub's events as server-sent events, for the stream routes.

The task and monitoring streams send the hub's events as they are (``event`` is the
event's kind, ``id`` its hub id, to resume from with ``Last-Event-ID``). A translation
job's stream speaks VPSWeb's UI (``connected``, ``status``, ``step_change``,
``step_start``, ``step_complete``, ``heartbeat``, then ``completed``, or ``failed`` and
``error``), built from the job's stored state, so a late or returning client is replayed
the job so far; ``?format=detailed`` is our richer stream of the hub's step events
(details, result).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fastapi.sse import ServerSentEvent

from vpsweb_tasks import ProgressUpdate, TaskStatus
from vpsweb_tasks.events import Event, SubscriberLagged, TaskProgressed
from vpsweb_tasks.translation import STEP_NAMES, STEPS, TranslationJob, VPSWebAdapter
from vpsweb_tasks.translation.models import StepState

from .schemas import ProgressResponse

__all__ = [
    "FINAL_EVENTS",
    "VPSWEB_STATUS",
    "VPSWebSeen",
    "hub_event",
    "job_event",
    "job_final",
    "job_status",
    "reset",
    "task_status",
    "vpsweb_changes",
    "vpsweb_connected",
    "vpsweb_final",
    "vpsweb_heartbeat",
    "vpsweb_percent",
]

#: The kinds after which a task's stream ends.
FINAL_EVENTS = frozenset({"task_completed", "task_dead_lettered", "task_cancelled"})


def hub_event(event: Event) -> ServerSentEvent:
    return ServerSentEvent(event=event.kind, id=str(event.id), data=event.to_dict())


def task_status(update: ProgressUpdate) -> ServerSentEvent:
    """A task's state now, the first event of its stream."""
    return ServerSentEvent(event="status", data=ProgressResponse.of(update).model_dump(mode="json"))


def reset(lagged: SubscriberLagged, now: int) -> ServerSentEvent:
    """Events after ``lagged.last_id`` are no longer kept: the client must reload state."""
    return ServerSentEvent(
        event="reset",
        data={"reason": "events were lost", "last_id": lagged.last_id, "now": now},
    )


# --- translation jobs: the detailed stream ----------------------------------------------


def _percent(progress: float) -> int:
    return round(progress * 100)


def job_status(job: TranslationJob) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "status": job.status.value,
        "progress": job.progress,
        "percent": _percent(job.progress),
        "message": job.message,
        "current_step": job.current_step,
        "steps_completed": job.steps_completed,
        "step_states": job.step_states,
        "attempts": job.attempts,
    }


async def job_event(vpsweb: VPSWebAdapter, job_id: str, event: Event) -> ServerSentEvent:
    """One hub event of the job, with the step's details."""
    if isinstance(event, TaskProgressed) and event.update is not None:
        update = event.update
        meta = update.metadata or {}
        kind = meta.get("event")
        if kind in ("step_start", "step_complete"):
            data = {
                "job_id": job_id,
                "step": meta.get("step"),
                "step_name": meta.get("step_name"),
                "progress": update.progress,
                "percent": _percent(update.progress),
                "message": update.message,
                "details": meta.get("details", {}),
            }
            return ServerSentEvent(event=kind, id=str(event.id), data=data)
    # Anything else (started, retrying, deferred, requeued, other progress): the state now.
    job = await vpsweb.status(job_id)
    data = {**job_status(job), "cause": event.kind}
    return ServerSentEvent(event="status", id=str(event.id), data=data)


async def job_final(vpsweb: VPSWebAdapter, job_id: str, event: Event | None) -> ServerSentEvent:
    """The last event of a job's stream: ``completed`` with the result, or ``error``."""
    job = await vpsweb.status(job_id)
    event_id = None if event is None else str(event.id)
    if job.status is TaskStatus.COMPLETED:
        result = await vpsweb.result(job_id)
        return ServerSentEvent(
            event="completed",
            id=event_id,
            data={"job_id": job_id, **result.model_dump(mode="json")},
        )
    message = job.error_message or f"translation job {job.status.value}"
    return ServerSentEvent(
        event="error",
        id=event_id,
        data={
            "job_id": job_id,
            "status": job.status.value,
            "message": message,
            "error_category": job.error_category,
        },
    )


# --- translation jobs: VPSWeb's UI stream ------------------------------------------------
# Event names, fields and scales of VPSWeb's web UI (github.com/OCboy5/vpsweb): the events
# its poem_detail.html template listens for (startWorkflowPolling) and its server sends
# (webui/main.py, create_translation_events_from_app_state; webui/sse_real.py). The table
# is in docs/translation.md. Every event carries ``task_id``; ``progress`` is an integer
# 0..100; ``step`` a number 1..3; ``current_step`` and the keys of ``step_states`` are
# VPSWeb's step names.

#: VPSWeb's task statuses (pending, running, completed, failed) for ours: a job waiting
#: for its retry is still in progress, and VPSWeb marks a cancelled task failed.
VPSWEB_STATUS = {
    TaskStatus.PENDING: "pending",
    TaskStatus.RUNNING: "running",
    TaskStatus.RETRYING: "running",
    TaskStatus.COMPLETED: "completed",
    TaskStatus.FAILED: "failed",
    TaskStatus.CANCELLED: "failed",
}


def vpsweb_percent(done: int) -> int:
    """Percent after ``done`` of the three steps, truncated as VPSWeb does (0, 33, 66,
    100)."""
    return done * 100 // len(STEPS)


@dataclass
class VPSWebSeen:
    """What a VPSWeb stream has told its client so far."""

    states: dict[str, StepState] = field(default_factory=lambda: dict.fromkeys(STEPS, "waiting"))
    status: str | None = None
    progress: int | None = None
    current_step: str | None = None


def _now() -> float:
    return time.time()


def _view(job: TranslationJob) -> dict[str, Any]:
    """The job as VPSWeb's ``status`` event shows a task."""
    done = len(job.steps_completed)
    current = None
    if job.status is not TaskStatus.PENDING and job.current_step is not None:
        current = STEP_NAMES[job.current_step]
    return {
        "task_id": job.job_id,
        "status": VPSWEB_STATUS[job.status],
        "job_status": job.status.value,
        "progress": 100 if job.status is TaskStatus.COMPLETED else vpsweb_percent(done),
        "current_step": current,
        "total_steps": len(STEPS),
        "step_states": {STEP_NAMES[step]: state for step, state in job.step_states.items()},
        "step_progress": {
            STEP_NAMES[step]: 100 if state == "completed" else 0
            for step, state in job.step_states.items()
        },
        "message": job.message,
        "timestamp": _now(),
    }


def _step_event(kind: str, job_id: str, index: int) -> ServerSentEvent:
    number, name = index + 1, STEP_NAMES[STEPS[index]]
    finished = kind == "step_complete"
    return ServerSentEvent(
        event=kind,
        data={
            "task_id": job_id,
            "step": number,
            "message": f"Step {number}/{len(STEPS)}: {name}" + (" completed" if finished else ""),
            "progress": vpsweb_percent(number if finished else index),
            "timestamp": _now(),
        },
    )


def vpsweb_connected(job: TranslationJob) -> ServerSentEvent:
    view = _view(job)
    return ServerSentEvent(
        event="connected",
        data={
            "task_id": job.job_id,
            "message": f"Connected to translation progress stream for task {job.job_id}",
            "status": view["status"],
            "progress": view["progress"],
            "timestamp": view["timestamp"],
        },
    )


def vpsweb_changes(seen: VPSWebSeen, job: TranslationJob) -> list[ServerSentEvent]:
    """What the client must hear to go from ``seen`` to ``job`` (``seen`` is updated):
    each step's ``step_start`` and ``step_complete`` once, in order (a step that started
    and finished between two looks gets both), then ``status`` and ``step_change`` if the
    state or the current step changed. From a fresh ``seen``, this replays the job so far."""
    events: list[ServerSentEvent] = []
    for index, step in enumerate(STEPS):
        before, after = seen.states[step], job.step_states.get(step, "waiting")
        started = before in ("running", "completed")
        if (after == "running" and before != "running") or (after == "completed" and not started):
            events.append(_step_event("step_start", job.job_id, index))
        if after == "completed" and before != "completed":
            events.append(_step_event("step_complete", job.job_id, index))
        seen.states[step] = after
    view = _view(job)
    changed = (view["status"], view["progress"], view["current_step"]) != (
        seen.status,
        seen.progress,
        seen.current_step,
    )
    if changed or events:
        events.append(ServerSentEvent(event="status", data=view))
    if view["current_step"] is not None and view["current_step"] != seen.current_step:
        step_details = {"step_status": job.step_states.get(job.current_step or "", "waiting")}
        events.append(
            ServerSentEvent(
                event="step_change",
                data={**view, "step_details": {**step_details, "mode": job.workflow_mode.value}},
            )
        )
    seen.status, seen.progress, seen.current_step = (
        view["status"],
        view["progress"],
        view["current_step"],
    )
    return events


def vpsweb_final(job: TranslationJob) -> list[ServerSentEvent]:
    """The last events of a finished job: ``completed``, or ``failed`` then ``error``
    (VPSWeb's UI handles ``failed`` and closes; its server sends ``error``)."""
    now = _now()
    if job.status is TaskStatus.COMPLETED:
        data = {
            "task_id": job.job_id,
            "message": "Translation workflow completed successfully",
            "progress": 100,
            "timestamp": now,
        }
        return [ServerSentEvent(event="completed", data=data)]
    message = job.error_message or f"Translation job {job.status.value}"
    data = {
        "task_id": job.job_id,
        "status": VPSWEB_STATUS[job.status],
        "job_status": job.status.value,
        "message": message,
        "error_message": message,
        "error_category": job.error_category,
        "timestamp": now,
    }
    return [ServerSentEvent(event="failed", data=data), ServerSentEvent(event="error", data=data)]


def vpsweb_heartbeat(job_id: str) -> list[ServerSentEvent]:
    """A comment (proxies see traffic) and VPSWeb's ``heartbeat`` event."""
    return [
        ServerSentEvent(comment="heartbeat"),
        ServerSentEvent(
            event="heartbeat",
            data={"task_id": job_id, "message": "Task status check", "timestamp": _now()},
        ),
    ]
