"""The two ways the inspection commands reach the queue, behind one interface.

:class:`Direct` opens the database of ``--config`` with a :class:`TaskManager` that runs no
workers (``background_tasks.enabled: false``): reads only open the store; writes start the
manager, so they go through the library's own code (a cancel reaches the worker running
the task, a requeue wakes the workers). :class:`Http` calls a server's documented routes
under ``/api/v1/background-tasks`` with ``X-API-Key``. Both answer in the HTTP API's
shapes (:mod:`.views`) and fail with a :class:`~.exits.CliError`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Protocol

import anyio
import anyio.abc
import httpx
from httpx_sse import aconnect_sse

from ..config import Settings
from ..context import TaskContext
from ..errors import HandlerUnavailableError, VpswebTasksError
from ..manager import TaskManager, make_store
from ..models import TaskDefinition, TaskStatus
from ..storage.base import TaskStore
from .exits import CliError, Exit, exit_of, option_of
from .views import View, queue_view, task_view

__all__ = ["ACTIVE", "FINISHED", "Backend", "Direct", "Http", "Report", "parse_statuses"]

#: The order ``tasks list`` shows them in: waiting and running tasks newest first, then
#: finished tasks most recently finished first (the HTTP API's ``/active`` and
#: ``/completed``).
ACTIVE = (TaskStatus.RUNNING, TaskStatus.PENDING, TaskStatus.RETRYING)
FINISHED = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


#: Told each change of a watched task.
Report = Callable[[View], None]


class Backend(Protocol):
    """What the commands ask of the queue. Task views are the HTTP API's JSON."""

    async def list_tasks(
        self, statuses: Collection[TaskStatus], task_type: str | None, limit: int
    ) -> list[View]: ...

    async def show(self, task_id: str) -> View: ...

    async def cancel(self, task_id: str) -> View: ...

    async def requeue(self, task_id: str) -> View: ...

    async def dead_letters(
        self, category: str | None, task_type: str | None, limit: int
    ) -> list[View]: ...

    async def requeue_all(self, category: str | None, task_type: str | None) -> int: ...

    async def submit(self, body: Mapping[str, Any], idempotency_key: str | None) -> View: ...

    async def pause(self, reason: str | None) -> View: ...

    async def resume(self) -> View: ...

    async def clear(self) -> int: ...

    async def watch(self, task_id: str, interval: float, report: Report) -> View:
        """Follow the task until it ends: ``report`` its state now, then each change
        (``status``, ``progress`` and ``message`` at least); the whole view of the
        finished task is returned."""
        ...


# --- the database directly ------------------------------------------------------------------


async def _never_here(context: TaskContext) -> None:  # pragma: no cover - never dispatched
    raise HandlerUnavailableError("the vpsweb-tasks CLI runs no tasks")


class Direct:
    """The database of the config file, through a manager that runs nothing."""

    def __init__(self, settings: Settings, *, connect_timeout: float) -> None:
        background = settings.background_tasks.model_copy(update={"enabled": False})
        # A client: the workers and the server log what its requests change.
        logging_ = settings.logging.model_copy(update={"file": None})
        self.settings = settings.model_copy(
            update={"background_tasks": background, "logging": logging_}
        )
        self.connect_timeout = connect_timeout
        self._stack: contextlib.AsyncExitStack | None = None
        self._store: TaskStore | None = None
        self._manager: TaskManager | None = None

    async def __aenter__(self) -> Direct:
        storage = self.settings.storage
        if storage.backend == "sqlite" and not storage.sqlite_path.exists():
            raise CliError(
                Exit.UNAVAILABLE,
                f"no database at {storage.sqlite_path} (storage.sqlite_path of the config;"
                " a server or worker creates it)",
            )
        store = make_store(self.settings)
        if hasattr(store, "connect_timeout"):  # PostgreSQL: fail as fast as --timeout says
            store.connect_timeout = self.connect_timeout
        stack = contextlib.AsyncExitStack()
        try:
            await stack.enter_async_context(store)
        except VpswebTasksError as exc:
            raise exit_of(exc) from None
        self._stack, self._store = stack, store
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._stack is not None:
            await self._stack.aclose()

    @property
    def manager(self) -> TaskManager:
        """For reads: a manager on the open store, not started."""
        if self._manager is None:
            assert self._store is not None, "use `async with Direct(...)`"
            self._manager = TaskManager(self.settings, store=self._store)
        return self._manager

    async def running(self) -> TaskManager:
        """For writes: the manager, started (it runs no workers)."""
        manager = self.manager
        if not manager.running:
            assert self._stack is not None
            await manager.start()
            self._stack.push_async_callback(manager.stop)
        return manager

    async def list_tasks(
        self, statuses: Collection[TaskStatus], task_type: str | None, limit: int
    ) -> list[View]:
        found: list[View] = []
        for group, order in ((ACTIVE, "created_desc"), (FINISHED, "finished_desc")):
            wanted = [s for s in group if s in statuses]
            if wanted and len(found) < limit:
                records = await self.manager.list_tasks(
                    statuses=wanted, task_type=task_type, limit=limit - len(found), order=order
                )
                found += [task_view(r) for r in records]
        return found

    async def show(self, task_id: str) -> View:
        record = await self.manager.get_task(task_id)
        return task_view(record, await self.manager.store.list_executions(task_id))

    async def cancel(self, task_id: str) -> View:
        return task_view(await (await self.running()).cancel(task_id))

    async def requeue(self, task_id: str) -> View:
        return task_view(await (await self.running()).requeue(task_id))

    async def dead_letters(
        self, category: str | None, task_type: str | None, limit: int
    ) -> list[View]:
        records = await self.manager.list_dead_letters(
            category=category, task_type=task_type, limit=limit
        )
        return [task_view(r) for r in records]

    async def requeue_all(self, category: str | None, task_type: str | None) -> int:
        return await (await self.running()).requeue_all(category=category, task_type=task_type)

    async def submit(self, body: Mapping[str, Any], idempotency_key: str | None) -> View:
        fields = {
            _DEFINITION_NAMES.get(name, name): value
            for name, value in body.items()
            if name != "payload"
        }
        fields["idempotency_key"] = idempotency_key
        definition = TaskDefinition.model_validate(
            {name: value for name, value in fields.items() if value is not None}
        )
        manager = await self.running()
        if definition.task_type not in manager.task_types:
            # The workers have its handler; this process runs nothing, so it needs none
            # (as a server started with --no-workers and --import does).
            manager.register(definition.task_type, _never_here)
        context = await manager.submit(definition, definition.task_type, **body.get("payload", {}))
        record = await context.wait_stored()
        return {**_submitted(task_view(record)), "replayed": context.replayed}

    async def pause(self, reason: str | None) -> View:
        manager = await self.running()
        await manager.pause(reason)
        return queue_view(await manager.queue_status())

    async def resume(self) -> View:
        manager = await self.running()
        await manager.resume()
        return queue_view(await manager.queue_status())

    async def clear(self) -> int:
        return await (await self.running()).clear()

    async def watch(self, task_id: str, interval: float, report: Report) -> View:
        # Another process runs the task: its progress reaches this one through storage
        # only (written every progress_flush_interval), so read it there.
        while True:
            record = await self.manager.get_task(task_id)
            if record.status.is_terminal:
                return await self.show(task_id)
            report(task_view(record))
            await anyio.sleep(interval)


#: The HTTP submit body's names that TaskDefinition spells otherwise (the others are the
#: same; the payload is the handler's input, not a field of the definition).
_DEFINITION_NAMES = {"task_name": "name", "delay_seconds": "delay"}


def _submitted(view: Mapping[str, Any]) -> View:
    """What ``submit`` answers: the fields of the HTTP API's submit answer."""
    keys = ("task_id", "status", "task_type", "priority", "created_at")
    return {key: view[key] for key in keys}


# --- a server -------------------------------------------------------------------------------

TASKS = "/api/v1/background-tasks"
#: The kinds of a task's event stream after which it ends (vpsweb_tasks_http.sse).
FINAL_EVENTS = frozenset({"task_completed", "task_dead_lettered", "task_cancelled"})
_PAGE = 1000  # the API's largest page


class Http:
    """A vpsweb-tasks server at ``url`` (the root under which ``/api/v1`` is served)."""

    def __init__(self, url: str, *, api_key: str | None, timeout: float) -> None:
        if not url.startswith(("http://", "https://")):
            raise CliError(Exit.USAGE, f"--url: {url!r} is not an http:// or https:// URL")
        self.url = url.rstrip("/")
        headers = {"X-API-Key": api_key} if api_key else {}
        self.client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)

    async def __aenter__(self) -> Http:
        await self.client.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.client.__aexit__(*exc_info)

    async def _call(self, method: str, path: str, **options: Any) -> httpx.Response:
        try:
            response = await self.client.request(method, TASKS + path, **options)
        except httpx.TimeoutException:
            raise CliError(Exit.UNAVAILABLE, f"{self.url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise CliError(Exit.UNAVAILABLE, f"cannot reach {self.url}: {exc}") from None
        if response.is_success:
            return response
        raise self._refused(response)

    def _refused(self, response: httpx.Response) -> CliError:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        detail = body.get("detail") if isinstance(body, dict) else None
        if status == 404 and detail == "Not Found":  # no such route: not our API
            return CliError(
                Exit.UNAVAILABLE,
                f"no vpsweb-tasks API at {self.url} ({response.request.url.path}: 404)",
            )
        if status == 422 and isinstance(detail, list) and detail:
            first = detail[0]
            where = option_of(first.get("loc", ()))
            return CliError(Exit.USAGE, f"{where}: {first.get('msg')}")
        message = detail if isinstance(detail, str) else f"{status} {response.reason_phrase}"
        if status in (401, 403):
            return CliError(
                Exit.AUTH,
                f"{self.url} refused the API key ({status}: {message}); pass --api-key or"
                " set $VPSWEB_TASKS_API_KEY",
            )
        if status == 404:
            return CliError(Exit.NOT_FOUND, message)
        if status in (409, 429):
            return CliError(Exit.CONFLICT, message)
        return CliError(Exit.UNAVAILABLE, f"{self.url} answered {status}: {message}")

    async def _json(self, method: str, path: str, **options: Any) -> Any:
        response = await self._call(method, path, **options)
        try:
            return response.json()
        except ValueError:
            raise CliError(
                Exit.UNAVAILABLE, f"no vpsweb-tasks API at {self.url} (not JSON from {path})"
            ) from None

    async def _collect(
        self,
        path: str,
        params: Mapping[str, Any],
        keep: Collection[str] | None,
        task_type: str | None,
        limit: int,
    ) -> list[View]:
        """Up to ``limit`` tasks of a list route, of the statuses ``keep`` (None: all) and
        ``task_type``, filtered here a page at a time where the route cannot filter."""
        filtered = keep is not None or task_type is not None
        page = _PAGE if filtered else limit
        found: list[View] = []
        offset = 0
        while len(found) < limit:
            answer = await self._json(
                "GET", path, params={**params, "limit": page, "offset": offset}
            )
            tasks = answer["tasks"]
            found += [
                t
                for t in tasks
                if (keep is None or t["status"] in keep)
                and (task_type is None or t["task_type"] == task_type)
            ]
            if len(tasks) < page:
                break
            offset += page
        return found[:limit]

    async def list_tasks(
        self, statuses: Collection[TaskStatus], task_type: str | None, limit: int
    ) -> list[View]:
        found: list[View] = []
        active = [s.value for s in ACTIVE if s in statuses]
        if active:
            keep = None if len(active) == len(ACTIVE) else active
            found += await self._collect("/active", {}, keep, task_type, limit)
        finished = [s.value for s in FINISHED if s in statuses]
        if finished and len(found) < limit:
            params = {"status": finished}
            found += await self._collect("/completed", params, None, task_type, limit - len(found))
        return found

    async def show(self, task_id: str) -> View:
        view: View = await self._json("GET", f"/status/{_quote(task_id)}")
        return view

    async def cancel(self, task_id: str) -> View:
        view: View = await self._json("POST", f"/cancel/{_quote(task_id)}")
        return view

    async def requeue(self, task_id: str) -> View:
        view: View = await self._json("POST", f"/dead-letters/{_quote(task_id)}/requeue")
        return view

    async def dead_letters(
        self, category: str | None, task_type: str | None, limit: int
    ) -> list[View]:
        params = {"limit": limit, "category": category, "task_type": task_type}
        answer = await self._json(
            "GET", "/dead-letters", params={k: v for k, v in params.items() if v is not None}
        )
        tasks: list[View] = answer["tasks"]
        return tasks

    async def requeue_all(self, category: str | None, task_type: str | None) -> int:
        body = {"category": category, "task_type": task_type}
        answer = await self._json(
            "POST",
            "/dead-letters/requeue",
            json={k: v for k, v in body.items() if v is not None},
        )
        return int(answer["requeued"])

    async def submit(self, body: Mapping[str, Any], idempotency_key: str | None) -> View:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = await self._call("POST", "/submit", json=dict(body), headers=headers)
        return {**_submitted(response.json()), "replayed": response.status_code == 200}

    async def pause(self, reason: str | None) -> View:
        body = {} if reason is None else {"reason": reason}
        view: View = await self._json("POST", "/queue/pause", json=body)
        return view

    async def resume(self) -> View:
        view: View = await self._json("POST", "/queue/resume")
        return view

    async def clear(self) -> int:
        return int((await self._json("POST", "/queue/clear"))["cancelled"])

    async def watch(self, task_id: str, interval: float, report: Report) -> View:
        """The task's event stream for every change as it happens, and its status every
        ``interval`` as well: a server started with ``--no-workers`` hears nothing of the
        worker processes that run its tasks, but reads their progress from storage."""
        await self.show(task_id)  # a 404 before anything starts
        send, receive = anyio.create_memory_object_stream[View](100)
        async with anyio.create_task_group() as tg, receive:
            tg.start_soon(self._stream, task_id, send.clone())
            tg.start_soon(self._poll, task_id, interval, send)
            async for view in receive:
                if view["status"] in FINISHED:
                    tg.cancel_scope.cancel()
                    break
                report(view)
        return await self.show(task_id)

    async def _poll(
        self, task_id: str, interval: float, send: anyio.abc.ObjectSendStream[View]
    ) -> None:
        async with send:
            while True:
                await send.send(await self.show(task_id))
                await anyio.sleep(interval)

    async def _stream(self, task_id: str, send: anyio.abc.ObjectSendStream[View]) -> None:
        # Best effort: the poll is the guarantee, so a stream that breaks is left to it.
        state: View = {}
        async with send:
            with contextlib.suppress(httpx.HTTPError):
                path = f"{TASKS}/tasks/{_quote(task_id)}/events"
                async with aconnect_sse(self.client, "GET", path, timeout=None) as source:
                    if not source.response.is_success:
                        return
                    async for event in source.aiter_sse():
                        change = _change(event.event, json.loads(event.data) if event.data else {})
                        if change:
                            state = {**state, **change}
                            if "status" in state:
                                await send.send(dict(state))
                        if event.event in FINAL_EVENTS:
                            return


def _change(kind: str, data: Mapping[str, Any]) -> View:
    """The part of a task's state an event of its stream tells."""
    if kind == "status":
        return {k: data[k] for k in ("status", "progress", "message") if k in data}
    if kind == "task_progressed" and isinstance(data.get("update"), dict):
        update = data["update"]
        return {"status": "running", "progress": update["progress"], "message": update["message"]}
    statuses = {
        "task_started": "running",
        "task_retry_scheduled": "retrying",
        "task_deferred": "retrying",
        "task_requeued": "pending",
        "task_completed": "completed",
        "task_dead_lettered": "failed",
        "task_cancelled": "cancelled",
    }
    return {"status": statuses[kind]} if kind in statuses else {}


def _quote(task_id: str) -> str:
    from urllib.parse import quote

    return quote(task_id, safe="")


def parse_statuses(values: Sequence[str]) -> list[TaskStatus]:
    """``--status`` values (repeated or comma-separated) as statuses; none: all."""
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    if not names:
        return list(TaskStatus)
    try:
        return [TaskStatus(name) for name in dict.fromkeys(names)]
    except ValueError:
        bad = next(n for n in names if n not in {s.value for s in TaskStatus})
        choices = ", ".join(s.value for s in TaskStatus)
        raise CliError(Exit.USAGE, f"--status: unknown status {bad!r} (one of {choices})") from None
