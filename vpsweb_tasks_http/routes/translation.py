"""Translation jobs and the VPSWeb health checks (the document's "Translation Jobs" and
"System Health" tables).

Each route calls one method of the manager's :class:`~vpsweb_tasks.translation.VPSWebAdapter`
(:func:`~vpsweb_tasks.translation.get_vpsweb_adapter`, looked up per request, so an adapter
made later with VPSWeb's own workflow is the one used). The job id is the id of the job's
task, so the task routes (status, progress, history, events) also work for jobs.
``/translation/{job_id}/events`` streams a job as VPSWeb's web UI listens to it, or in
our richer form with ``?format=detailed`` (:mod:`..sse`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal

import anyio
from fastapi import Depends, HTTPException, Path, Query, Request, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

from vpsweb_tasks import TaskStatus
from vpsweb_tasks.events import Event, TaskCancelled, TaskCompleted, TaskDeadLettered
from vpsweb_tasks.translation import (
    CompareRequest,
    Comparison,
    IntegrationStatus,
    ProviderHealth,
    TranslationBatch,
    TranslationJob,
    TranslationRequest,
    TranslationResult,
    UsageSummary,
    VPSWebAdapter,
    get_vpsweb_adapter,
)
from vpsweb_tasks.validation import storable

from .. import sse
from .._routing import RouteGroup, group_url
from ..deps import StreamAuthorised, state_of
from ..errors import GUARDED_RESPONSES, STREAM_RESPONSES
from ..schemas import (
    ErrorResponse,
    TranslationBatchResponse,
    TranslationListResponse,
    TranslationSubmitResponse,
)
from ._shared import REPLAYED, TASKS, IdempotencyKeyHeader, LastEventId, replayed

__all__ = ["group"]

JobId = Annotated[str, Path(min_length=1, max_length=100, description="The job's id"), storable]

group = RouteGroup(
    api_key=True,
    prefix=TASKS,
    tags=["translation jobs"],
    responses={
        **GUARDED_RESPONSES,
        503: {
            "model": ErrorResponse,
            "description": "Not running, or no LLM provider is configured (problems: what to"
            " configure)",
        },
    },
)


def adapter_of(request: Request) -> VPSWebAdapter:
    """The adapter of the manager of the route answering ``request`` (behind the API key:
    the group's route class checked it)."""
    return get_vpsweb_adapter(state_of(request).manager)


# --- translation jobs -----------------------------------------------------------------------


@group.post("/translation", status_code=202, responses=REPLAYED, summary="Submit translation job")
async def submit(
    body: TranslationRequest,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> TranslationSubmitResponse:
    """202: stored. A repeat of an earlier submit's `Idempotency-Key` and body: 200 with
    its job; the key with another body: 422."""
    vpsweb = adapter_of(request)
    job = await vpsweb.submit(body, idempotency_key=idempotency_key)
    if job.replayed:
        replayed(response)
    return TranslationSubmitResponse.of(job, group_url(request, "/translation"))


@group.get("/translation", summary="List translation jobs, newest first")
async def list_jobs(
    request: Request,
    status: Annotated[list[TaskStatus] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> TranslationListResponse:
    vpsweb = adapter_of(request)
    jobs = await vpsweb.list_jobs(statuses=status, limit=limit, offset=offset)
    return TranslationListResponse(jobs=jobs, count=len(jobs), limit=limit, offset=offset)


@group.post(
    "/translation/batch",
    status_code=202,
    responses=REPLAYED,
    summary="Submit batch translation jobs",
)
async def batch(
    body: TranslationBatch,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> TranslationBatchResponse:
    """202: stored, all or none. One `Idempotency-Key` for the batch: a repeat with the same
    body answers 200 with the first batch's jobs; the key with another body: 422."""
    vpsweb = adapter_of(request)
    most = vpsweb.settings.max_batch_size
    if len(body.requests) > most:
        detail = [
            {
                "type": "too_long",
                "loc": ["body", "requests"],
                "msg": f"a batch holds at most {most} requests (translation.max_batch_size)",
                "input": len(body.requests),
            }
        ]
        raise HTTPException(422, detail)
    jobs = await vpsweb.batch(body, idempotency_key=idempotency_key)
    if jobs and jobs[0].replayed:
        replayed(response)
    base = group_url(request, "/translation/batch")
    return TranslationBatchResponse(
        job_ids=[job.job_id for job in jobs],
        jobs=[TranslationSubmitResponse.of(job, base) for job in jobs],
        count=len(jobs),
    )


@group.post("/translation/compare", summary="Compare workflow modes")
async def compare(body: CompareRequest, request: Request) -> Comparison:
    vpsweb = adapter_of(request)
    return await vpsweb.compare(body)


@group.get("/translation/compare", summary="Jobs of a comparison, side by side")
async def comparison(
    request: Request,
    job_id: Annotated[list[Annotated[str, storable]], Query(min_length=1, max_length=10)],
) -> Comparison:
    vpsweb = adapter_of(request)
    return await vpsweb.comparison(job_id)


@group.get("/translation/usage", summary="Tokens and cost of translation steps, by model")
async def usage(
    request: Request,
    window_seconds: Annotated[
        float | None,
        Query(gt=0, le=366 * 24 * 3600, description="Default: the statistics window"),
    ] = None,
) -> UsageSummary:
    """Tokens and cost (at `providers.<name>.prices`) of the steps that finished in the
    window, by model and in all, from the jobs still kept."""
    vpsweb = adapter_of(request)
    return await vpsweb.usage(window_seconds)


@group.get("/translation/{job_id}", name="translation_status", summary="Get translation job status")
async def status_of(job_id: JobId, request: Request) -> TranslationJob:
    vpsweb = adapter_of(request)
    return await vpsweb.status(job_id)


@group.get(
    "/translation/{job_id}/result",
    name="translation_result",
    summary="Get translation job result",
    responses={409: {"model": ErrorResponse, "description": "The job has not completed"}},
)
async def result(job_id: JobId, request: Request) -> TranslationResult:
    vpsweb = adapter_of(request)
    return await vpsweb.result(job_id)


@group.post("/translation/{job_id}/retry", summary="Retry failed translation job")
async def retry(job_id: JobId, request: Request) -> TranslationJob:
    vpsweb = adapter_of(request)
    return await vpsweb.retry(job_id)


@group.delete("/translation/{job_id}", summary="Cancel translation job")
async def cancel(job_id: JobId, request: Request) -> TranslationJob:
    """As the task cancel: the job is `cancelled`, or `running` with `cancel_requested`
    true while the worker process that runs it stops it. A finished job answers 409."""
    vpsweb = adapter_of(request)
    return await vpsweb.cancel(job_id)


StreamFormat = Literal["vpsweb", "detailed"]


async def streamed_job(job_id: JobId, state: StreamAuthorised) -> tuple[VPSWebAdapter, str]:
    """The adapter and the job of a stream (the API key or a stream token, as EventSource
    cannot send headers); answers 404 before the stream starts, rather than inside it."""
    vpsweb = get_vpsweb_adapter(state.manager)
    await vpsweb.status(job_id)
    return vpsweb, job_id


@group.get(
    "/translation/{job_id}/events",
    name="translation_events",
    response_class=EventSourceResponse,
    summary="Server-sent events of a job, as VPSWeb's web UI listens to them",
    responses=STREAM_RESPONSES,
    api_key=False,  # the key or a stream token: its guard is StreamAuthorised
)
async def events(
    streamed: Annotated[tuple[VPSWebAdapter, str], Depends(streamed_job)],
    stream_format: Annotated[
        StreamFormat,
        Query(
            alias="format",
            description="vpsweb: VPSWeb's UI events (connected, status, step_change,"
            " step_start, step_complete, heartbeat, completed / failed + error), replaying"
            " the job so far; detailed: our events with each step's details and the result",
        ),
    ] = "vpsweb",
    last_event_id: LastEventId = None,
) -> AsyncIterator[ServerSentEvent]:
    vpsweb, job_id = streamed
    if stream_format == "detailed":
        async for event in _detailed(vpsweb, job_id, last_event_id):
            yield event
        return
    async for event in _vpsweb(vpsweb, job_id):
        yield event


async def _vpsweb(vpsweb: VPSWebAdapter, job_id: str) -> AsyncIterator[ServerSentEvent]:
    """VPSWeb's UI stream, built from the job's stored state: woken by this process's
    events of the job, and polled every ``queue_check_interval`` for jobs other processes
    run; a heartbeat after ``translation.heartbeat_seconds`` of silence."""
    manager = vpsweb.manager
    heartbeat = vpsweb.settings.heartbeat_seconds
    poll = min(heartbeat, manager.config.queue_check_interval)
    woken = anyio.Event()

    def wake(event: Event) -> None:
        if event.task_id == job_id:
            woken.set()

    remove = manager.events.add_listener(wake)
    try:
        job = await vpsweb.status(job_id)
        seen = sse.VPSWebSeen()
        yield sse.vpsweb_connected(job)
        quiet_since = anyio.current_time()
        while True:
            changes = sse.vpsweb_changes(seen, job)
            for change in changes:
                yield change
            if job.status.is_terminal:
                for final in sse.vpsweb_final(job):
                    yield final
                return
            now = anyio.current_time()
            if changes:
                quiet_since = now
            elif now - quiet_since >= heartbeat:
                for beat in sse.vpsweb_heartbeat(job_id):
                    yield beat
                quiet_since = now
            with anyio.move_on_after(min(poll, max(quiet_since + heartbeat - now, 0))):
                await woken.wait()
            woken = anyio.Event()  # before reading: a later event wakes the next wait
            job = await vpsweb.status(job_id)
    finally:
        remove()


async def _detailed(
    vpsweb: VPSWebAdapter, job_id: str, last_event_id: int | None
) -> AsyncIterator[ServerSentEvent]:
    """The hub's events of the job, with each step's details and the result."""
    hub = vpsweb.manager.events
    # The first event is the job's state now: a resume point the hub no longer has (an id
    # from before a restart) loses nothing by starting from now.
    after = hub.last_id
    if last_event_id is not None and hub.can_resume(last_event_id):
        after = last_event_id
    async with hub.subscribe(after=after) as stream:
        job = await vpsweb.status(job_id)
        yield ServerSentEvent(event="status", data=sse.job_status(job))
        if job.status.is_terminal:
            yield await sse.job_final(vpsweb, job_id, None)
            return
        async for event in stream:
            if event.task_id != job_id:
                continue
            if isinstance(event, TaskCompleted | TaskDeadLettered | TaskCancelled):
                yield await sse.job_final(vpsweb, job_id, event)
                return
            yield await sse.job_event(vpsweb, job_id, event)


# --- system health --------------------------------------------------------------------------


@group.get("/vpsweb/status", tags=["system health"], summary="VPSWeb integration status")
async def vpsweb_status(request: Request) -> IntegrationStatus:
    vpsweb = adapter_of(request)
    return await vpsweb.integration_status()


@group.get("/vpsweb/health", tags=["system health"], summary="VPSWeb comprehensive health check")
async def vpsweb_health(request: Request) -> ProviderHealth:
    vpsweb = adapter_of(request)
    return await vpsweb.health()
