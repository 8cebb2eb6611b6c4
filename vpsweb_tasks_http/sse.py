"""The event hub's events as server-sent events, for the stream routes.

The task and monitoring streams send the hub's events as they are (``event`` is the
event's kind, ``id`` its hub id, to resume from with ``Last-Event-ID``). The translation
stream speaks the event names of VPSWeb's UI: ``status`` (the state now, then every change
of status), ``step_start``, ``step_complete``, then ``completed`` (with the result) or
``error`` (failed or cancelled), after which the stream ends.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from fastapi.sse import ServerSentEvent

from vpsweb_tasks import ProgressUpdate, TaskStatus
from vpsweb_tasks.events import Event, SubscriberLagged, TaskProgressed
from vpsweb_tasks.translation import TranslationJob, VPSWebAdapter

from .schemas import ProgressResponse

__all__ = [
    "FINAL_EVENTS",
    "hub_event",
    "job_event",
    "job_final",
    "job_status",
    "reset",
    "resume_point",
    "task_status",
]

#: The kinds after which a task's stream ends.
FINAL_EVENTS = frozenset({"task_completed", "task_dead_lettered", "task_cancelled"})


def resume_point(last_event_id: str | None, after: int | None) -> int | None:
    """The hub id to resume after: the ``Last-Event-ID`` header (422 if it is not an event
    id), else ``after``."""
    if last_event_id is not None:
        try:
            return int(last_event_id)
        except ValueError:
            detail = [
                {
                    "type": "int_parsing",
                    "loc": ["header", "last-event-id"],
                    "msg": "Last-Event-ID must be an event id (an integer)",
                    "input": last_event_id,
                }
            ]
            raise HTTPException(422, detail) from None
    return after


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


# --- translation jobs, in VPSWeb's event names ------------------------------------------


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
        "attempts": job.attempts,
    }


async def job_event(vpsweb: VPSWebAdapter, job_id: str, event: Event) -> ServerSentEvent:
    """One hub event of the job, as VPSWeb's UI expects it."""
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
