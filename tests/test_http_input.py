"""Bad input over real HTTP is a 422 naming the field, never a 5xx, and stores nothing:
what JSON text can say but storage and JSON answers cannot hold (lone surrogates, NUL,
NaN, Infinity, 1e400), bodies that cannot be parsed, ids and filters no task can have,
and Last-Event-ID headers that are not event ids. Raw bodies, so that what ``json=``
refuses to send reaches the server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from vpsweb_tasks import InvalidInputError, TaskContext, TaskManager, TaskNotFoundError
from vpsweb_tasks.config import Settings
from vpsweb_tasks_http import create_app
from vpsweb_tasks_http.errors import error_response

from .http_server import serve
from .test_http import read_events

pytestmark = pytest.mark.anyio

TASKS = "/api/v1/background-tasks"
MONITORING = "/api/v1/monitoring"
JSON = {"content-type": "application/json"}


@dataclass
class Api:
    client: httpx.AsyncClient
    manager: TaskManager

    async def post(self, path: str, body: str | bytes) -> httpx.Response:
        content = body.encode("ascii") if isinstance(body, str) else body
        return await self.client.post(path, content=content, headers=JSON)


def setup(manager: TaskManager) -> None:
    @manager.task("echo")
    async def echo(context: TaskContext) -> dict[str, Any]:
        return dict(context.payload)


@pytest.fixture
async def api(
    storage: dict[str, Any], settings_factory: Callable[..., Settings]
) -> AsyncIterator[Api]:
    """The API on each backend (``storage``, conftest.py)."""
    app = create_app(settings_factory(storage=storage), setup=setup)
    async with serve(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        yield Api(client, app.state.manager)


def locs(response: httpx.Response) -> list[list[Any]]:
    assert response.status_code == 422, response.text
    return [error["loc"] for error in response.json()["detail"]]


SUBMIT = '{"task_name": "t", "task_type": "echo", %s}'


#: Submit fields (JSON text) and where the 422 says the problem is.
BAD_FIELDS: list[tuple[str, list[Any]]] = [
    ('"metadata": {"k": "\\udfff"}', ["body", "metadata"]),
    ('"metadata": {"\\ud800": 1}', ["body", "metadata"]),
    ('"payload": {"k": NaN}', ["body", "payload"]),
    ('"payload": {"k": [1, -Infinity]}', ["body", "payload"]),
    ('"payload": {"k": 1e400}', ["body", "payload"]),
    ('"payload": {"k": ' + "[" * 200 + "]" * 200 + "}", ["body", "payload"]),
    ('"timeout_seconds": NaN', ["body", "timeout_seconds"]),
    ('"timeout_seconds": 1e400', ["body", "timeout_seconds"]),
    ('"delay_seconds": Infinity', ["body", "delay_seconds"]),
    ('"max_retries": 1e400', ["body", "max_retries"]),
    ('"priority": "\\udfff"', ["body", "priority"]),
    ('"run_at": "9999-12-31T23:59:59-14:00"', ["body", "run_at"]),  # unreadable as UTC
    ('"run_at": "0001-01-01T00:00:00+14:00"', ["body", "run_at"]),
    # A key that is not text cannot be named as the extra field it is: the body is.
    ('"\\udfff": 1', ["body"]),
]


async def test_what_storage_cannot_hold_is_422_naming_the_field(api: Api) -> None:
    for fields, loc in BAD_FIELDS:
        response = await api.post(f"{TASKS}/submit", SUBMIT % fields)
        assert locs(response) == [loc], fields
        assert response.headers["content-type"] == "application/json"
    for name in ('"\\udfff"', '"a\\u0000b"', '"  "', '""', '"\\ud800\\udc00\\udfff"'):
        body = f'{{"task_name": {name}, "task_type": "echo"}}'
        response = await api.post(f"{TASKS}/submit", body)
        assert locs(response) == [["body", "task_name"]], name  # the HTTP field, not "name"
    assert await api.manager.list_tasks() == []


async def test_the_echoed_input_is_encoded_whatever_it_holds(api: Api) -> None:
    body = '{"task_name": "\\udfff", "task_type": "echo", "timeout_seconds": NaN}'
    response = await api.post(f"{TASKS}/submit", body)
    detail = {tuple(e["loc"]): e for e in response.json()["detail"]}
    assert detail["body", "task_name"]["input"] == "\\udfff"  # written out
    assert detail["body", "timeout_seconds"]["input"] == "NaN"
    deep = await api.post(f"{TASKS}/submit", '{"task_name": ' + "[" * 900 + "]" * 900 + "}")
    assert ["body", "task_name"] in locs(deep)


async def test_payload_keys_are_never_submits_own_parameters(api: Api) -> None:
    payload = {"fn": 1, "definition": 2, "self": 3, "payload": 4, "a\x00b": "c\x00d"}
    body = json.dumps({"task_name": "t", "task_type": "echo", "payload": payload})
    response = await api.post(f"{TASKS}/submit", body)
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    await api.manager.wait(task_id, timeout=10)
    status = (await api.client.get(f"{TASKS}/status/{task_id}")).json()
    assert (status["status"], status["result"]) == ("completed", payload)


async def test_a_submit_sets_the_tasks_max_lost_attempts(api: Api) -> None:
    """TaskDefinition's ``max_lost_attempts`` on the submit body: stored with the task; a
    value it does not take is 422 naming it, and nothing is stored."""
    body = {"task_name": "t", "task_type": "echo", "max_lost_attempts": 2}
    response = await api.post(f"{TASKS}/submit", json.dumps(body))
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    status = (await api.client.get(f"{TASKS}/status/{task_id}")).json()
    assert status["max_lost_attempts"] == 2
    for bad in ("0", "-1", "101", '"two"', "2.5", "[2]"):
        response = await api.post(f"{TASKS}/submit", SUBMIT % f'"max_lost_attempts": {bad}')
        assert locs(response) == [["body", "max_lost_attempts"]], bad
    assert [task.id for task in await api.manager.list_tasks()] == [task_id]


UNPARSABLE = [
    b'{"task_name": "\xff", "task_type": "echo"}',  # not UTF-8
    b"\xfe\xff\x00{",  # a UTF-16 byte order mark
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
]


async def test_a_body_that_cannot_be_parsed_is_422(api: Api) -> None:
    for body in UNPARSABLE:
        for path in (f"{TASKS}/submit", f"{TASKS}/queue/pause", f"{TASKS}/translation"):
            response = await api.post(path, body)
            [loc] = locs(response)
            assert loc[0] == "body", (path, body[:20])  # FastAPI adds where its parser stopped
            assert response.json()["detail"][0]["type"] == "json_invalid"


async def test_an_id_no_task_can_have_is_422_naming_it(api: Api) -> None:
    for task_id in ("%00", "a%00b", "%ED%BF%BF%00"):
        await _ids_are_422(api, task_id)


async def _ids_are_422(api: Api, task_id: str) -> None:
    for method, path in [
        ("GET", f"{TASKS}/status/{task_id}"),
        ("POST", f"{TASKS}/cancel/{task_id}"),
        ("GET", f"{TASKS}/dead-letters/{task_id}"),
        ("POST", f"{TASKS}/dead-letters/{task_id}/requeue"),
        ("GET", f"{MONITORING}/tasks/{task_id}/progress"),
        ("GET", f"{MONITORING}/tasks/{task_id}/history"),
        ("GET", f"{TASKS}/tasks/{task_id}/events"),
        ("GET", f"{TASKS}/translation/{task_id}"),
        ("GET", f"{TASKS}/translation/{task_id}/result"),
        ("POST", f"{TASKS}/translation/{task_id}/retry"),
        ("DELETE", f"{TASKS}/translation/{task_id}"),
        ("GET", f"{TASKS}/translation/{task_id}/events"),
    ]:
        response = await api.client.request(method, path)
        assert response.status_code == 422, (method, path, response.text)
        [error] = response.json()["detail"]
        assert error["loc"][:2] in (["path", "task_id"], ["path", "job_id"]), (path, error)


async def test_filters_no_task_can_have_are_422(api: Api) -> None:
    for path, loc in [
        (f"{TASKS}/dead-letters?task_type=a%00b", ["query", "task_type"]),
        (f"{TASKS}/translation/compare?job_id=%00", ["query", "job_id", 0]),
        (f"{MONITORING}/metrics/performance?since=nan", ["query", "since"]),
    ]:
        assert locs(await api.client.get(path)) == [loc], path
    response = await api.post(f"{TASKS}/dead-letters/requeue", '{"task_type": "a\\u0000"}')
    assert locs(response) == [["body", "task_type"]]


async def test_a_pause_reason_storage_cannot_hold_is_422(api: Api) -> None:
    for reason in ('"\\udfff"', '"a\\u0000b"'):
        response = await api.post(f"{TASKS}/queue/pause", f'{{"reason": {reason}}}')
        assert locs(response) == [["body", "reason"]]
    assert not (await api.client.get(f"{TASKS}/queue/status")).json()["paused"]


# --- Last-Event-ID ----------------------------------------------------------------------------


async def test_a_last_event_id_that_is_no_event_id_is_422_before_the_stream(api: Api) -> None:
    response = await api.post(
        f"{TASKS}/submit", '{"task_name": "t", "task_type": "echo", "delay_seconds": 600}'
    )
    task_id = response.json()["task_id"]
    for value in ("abc", "", "-1", "1.5", "0x10", "1e3"):
        for path in (f"{TASKS}/tasks/{task_id}/events", f"{MONITORING}/events"):
            response = await api.client.get(path, headers={"Last-Event-ID": value})
            assert locs(response) == [["header", "last-event-id"]], (path, value)
            assert response.headers["content-type"] == "application/json"


async def test_a_resume_point_from_before_a_restart_starts_the_task_stream_now(api: Api) -> None:
    """An id newer than any event (ids restart with the process): the stream starts with
    the task's state now, as a new one would, rather than breaking."""
    response = await api.post(
        f"{TASKS}/submit", '{"task_name": "t", "task_type": "echo", "delay_seconds": 600}'
    )
    task_id = response.json()["task_id"]
    url = f"{TASKS}/tasks/{task_id}/events"
    async with api.client.stream("GET", url, headers={"Last-Event-ID": "9" * 30}) as stream:
        assert stream.status_code == 200
        [first] = await read_events(stream, lambda event: True)
    assert first["event"] == "status"
    assert json.loads(first["data"])["status"] == "pending"


def test_openapi_documents_every_status_a_route_can_answer(
    settings_factory: Callable[..., Settings],
) -> None:
    """What the routes answer besides success is in the schema, in the media type it comes
    in (schemathesis checks the answers against it: tests/test_http_schema.py)."""
    paths = create_app(settings_factory()).openapi()["paths"]
    operations = [(path, op) for path, item in paths.items() for op in item.values()]
    assert len(operations) > 40
    for path, operation in operations:
        responses = operation["responses"]
        content = {code: set(answer.get("content", {})) for code, answer in responses.items()}
        assert content["413"] == {"text/plain"}, path
        assert content["503"] == {"application/json"}, path
        if path.endswith("/health"):
            continue
        for code in ("401", "404", "409", "429"):
            assert content[code] == {"application/json"}, (path, code)
        if operation.get("parameters") or operation.get("requestBody"):
            assert content["422"] == {"application/json"}, path


def test_library_errors_about_input_are_422s_that_can_be_written() -> None:
    """A library error the request models did not catch first still answers in FastAPI's
    shape, and any text it carries is written out rather than failing the answer."""
    invalid = error_response(
        InvalidInputError("payload", "k: nan is not a JSON number"), retry_after=1
    )
    assert invalid.status_code == 422
    [error] = json.loads(invalid.body)["detail"]
    assert (error["loc"], error["type"]) == (["body", "payload"], "invalid_input")
    missing = error_response(TaskNotFoundError("\udfff"), retry_after=1)
    assert json.loads(missing.body) == {"detail": "task not found: \\udfff"}
