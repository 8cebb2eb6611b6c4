"""Hostile input over real HTTP, on both backends: whatever a client posts to a write
route, the answer is never a 5xx, and every task stored afterwards reads back.

Bodies are sent as raw bytes, so that what ``json=`` would refuse to send reaches the
server: ``NaN`` and ``Infinity`` literals, ``1e400``, ``"\\udfff"`` escapes (lone
surrogates), ``\\u0000``, nesting thousands of levels deep, bytes that are not UTF-8.
Hypothesis makes them (derandomized: the same examples on every run) from valid bodies
of each route, with fields replaced by nasty values and nasty keys added (among them
``submit()``'s own parameter names).
"""

from __future__ import annotations

import functools
import json
import math
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import anyio.from_thread
import httpx
import pytest
from anyio.from_thread import BlockingPortal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpsweb_tasks import TaskContext, TaskManager
from vpsweb_tasks.config import Settings
from vpsweb_tasks.validation import json_problem
from vpsweb_tasks_http import create_app

from .http_server import serve
from .llm_server import fake_llm
from .test_translation import provider

TASKS = "/api/v1/background-tasks"
MONITORING = "/api/v1/monitoring"
EXAMPLES = 250


# --- JSON text, including what JSON has not -------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """A token written as it is (``1e400``, ``-Infinity``)."""

    text: str


@dataclass(frozen=True)
class Deep:
    """An array nested ``depth`` levels deep, written as text (no recursion anywhere)."""

    depth: int


def to_json(value: Any) -> str:
    """JSON text as a client could send it: NaN and Infinity as literals, a lone
    surrogate as its ``\\u`` escape (``ensure_ascii``), a NUL as ``\\u0000``."""
    match value:
        case Raw(text):
            return text
        case Deep(depth):
            return "[" * depth + "]" * depth
        case dict():
            items = (f"{json.dumps(str(k))}:{to_json(v)}" for k, v in value.items())
            return "{" + ",".join(items) + "}"
        case list():
            return "[" + ",".join(to_json(v) for v in value) + "]"
    return json.dumps(value)  # allow_nan and ensure_ascii by default


NASTY_TEXT = [
    "0001-01-01T00:00:00+14:00",  # a time with no UTC date in years 1-9999
    "9999-12-31T23:59:59-14:00",
    "\udfff",
    "a\ud800b",
    "\x00",
    "a\x00b",
    "",
    "   ",
    "\u2028\u2029",
    "\U0001d11e",
    "é" * 300,
    "x" * 100_000,
]
NASTY_NUMBERS: list[Any] = [
    math.nan,
    math.inf,
    -math.inf,
    Raw("1e400"),
    Raw("-1e400"),
    10**400,
    -1,
    0,
    1e308,
    -0.0,
    True,
]

text = st.one_of(st.sampled_from(NASTY_TEXT), st.text(max_size=8))
keys = st.one_of(
    st.sampled_from(["fn", "definition", "self", "payload", "task_type", "\udfff", "a\x00"]),
    text,
)
scalars = st.one_of(
    st.none(), st.sampled_from(NASTY_NUMBERS), text, st.integers(), st.floats(allow_nan=True)
)
#: JSON that is odd but storable: reserved keys, NUL inside strings, any Unicode text,
#: huge integers, nesting within the bound.
storable_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers() | st.just(10**400),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=8) | st.just("a\x00b"),
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=8,
).filter(lambda value: json_problem(value) is None)
storable_objects = st.dictionaries(
    st.text(max_size=8) | st.sampled_from(["fn", "definition", "self", "payload"]),
    storable_values,
    max_size=4,
)
values = st.recursive(
    st.one_of(scalars, st.integers(60, 3000).map(Deep)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=6,
)

TRANSLATION = {
    "original_text": "Quiet night: moonlight before my bed",
    "source_language": "zh-CN",
    "target_language": "en",
    "workflow_mode": "hybrid",
    "metadata": {"title": "Quiet Night Thought", "author": "Li Bai"},
}

#: Each write route: method, path, a valid body (None: no body), the fields never
#: mutated (compare's ``wait`` would hold the request for minutes).
ROUTES: list[tuple[str, str, dict[str, Any] | None, frozenset[str]]] = [
    (
        "POST",
        f"{TASKS}/submit",
        {
            "task_name": "fuzz",
            "task_type": "echo",
            "priority": "high",
            "max_retries": 1,
            "timeout_seconds": 30,
            "metadata": {"k": "v"},
            "payload": {"a": 1},
            "delay_seconds": 0,
        },
        frozenset(),
    ),
    (
        "POST",
        f"{TASKS}/submit",
        {"task_name": "at", "task_type": "echo", "run_at": "2026-01-01T00:00:00+01:00"},
        frozenset(),
    ),
    ("POST", f"{TASKS}/translation", TRANSLATION, frozenset()),
    ("POST", f"{TASKS}/translation/batch", {"requests": [TRANSLATION]}, frozenset()),
    (
        "POST",
        f"{TASKS}/translation/compare",
        {
            **{k: v for k, v in TRANSLATION.items() if k != "workflow_mode"},
            "workflow_modes": ["hybrid", "reasoning"],
            "wait": False,
            "timeout": 1,
        },
        frozenset({"wait"}),
    ),
    ("POST", f"{TASKS}/queue/pause", {"reason": "maintenance"}, frozenset()),
    ("POST", f"{TASKS}/queue/resume", None, frozenset()),
    ("POST", f"{TASKS}/dead-letters/requeue", {"task_type": "echo"}, frozenset()),
]
#: Routes that take an id in their path.
ID_ROUTES = [
    ("POST", f"{TASKS}/cancel/{{}}"),
    ("POST", f"{TASKS}/dead-letters/{{}}/requeue"),
    ("GET", f"{TASKS}/status/{{}}"),
    ("POST", f"{TASKS}/translation/{{}}/retry"),
    ("DELETE", f"{TASKS}/translation/{{}}"),
    ("GET", f"{MONITORING}/tasks/{{}}/progress"),
]
RAW_BODIES = [
    b"\xff\xfe",
    b'{"task_name": "\xff", "task_type": "echo"}',
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b"NaN",
    b'"\\udfff"',
    b'{"task_name": "x",',
    b"",
    b"null",
    b"[]",
]


@st.composite
def mutated(draw: st.DrawFn, body: dict[str, Any], fixed: frozenset[str]) -> dict[str, Any]:
    """``body`` with up to two fields replaced by odd values that are valid or by nasty
    ones, and sometimes a nasty key added."""
    result = dict(body)
    names = st.sampled_from(sorted(body.keys() - fixed))
    for name in draw(st.lists(names, max_size=2, unique=True)):
        match draw(st.sampled_from(["odd", "nasty"])):
            case "odd" if isinstance(body[name], dict):
                result[name] = draw(storable_objects)
            case "odd" if isinstance(body[name], str) and name.endswith(("name", "text")):
                result[name] = draw(st.text(min_size=1, max_size=50))
            case "nasty":
                result[name] = draw(values)
    if draw(st.integers(0, 4)) == 0:
        result.update(draw(st.dictionaries(keys, values, min_size=1, max_size=2)))
    return result


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, bytes | None]:
    """One request: a route, its URL and its raw body."""
    kind = draw(st.sampled_from(["body", "body", "body", "body", "raw", "id"]))
    if kind == "id":
        method, template = draw(st.sampled_from(ID_ROUTES))
        encoded = st.sampled_from(["%00", "%ED%BF%BF", "%FF", "%C0%80"])  # sent as they are
        text = st.sampled_from(["\udfff", "a\x00b", " ", "é" * 101]) | st.text(min_size=1)
        # Text percent-encoded as its UTF-8 bytes (a lone surrogate as UTF-8 would give it).
        quoted = text.map(lambda t: quote(t.encode("utf-8", "surrogatepass"), safe=""))
        path = template.format(draw(encoded | quoted))
        return method, path, None
    method, path, body, fixed = draw(st.sampled_from(ROUTES))
    if kind == "raw":
        return method, path, draw(st.sampled_from(RAW_BODIES))
    if body is None:
        return method, path, to_json(draw(values)).encode("ascii")
    return method, path, to_json(draw(mutated(body, fixed))).encode("ascii")


#: Idempotency-Key headers: none mostly, a few reused (with other bodies: a 422), odd ones.
idempotency_keys = st.one_of(
    *[st.none()] * 4,
    st.sampled_from(["same-key", "other-key", "a b", "x" * 300, b"\xff\xfe"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=10),
)


# --- the server --------------------------------------------------------------------------


def setup(manager: TaskManager) -> None:
    @manager.task("echo")
    async def echo(context: TaskContext) -> dict[str, Any]:
        # Whatever the payload holds comes back in an error message, then as the result.
        if context.attempt == 1 and context.payload:
            raise ConnectionError(f"payload {context.payload!r}: \udfff\x00")
        return {"payload": context.payload, "name": context.definition.name}


@dataclass
class Server:
    client: httpx.Client
    portal: BlockingPortal
    """Runs the server's event loop (in its own thread)."""
    manager: TaskManager


@pytest.fixture
def server(storage: dict[str, Any], settings_factory: Callable[..., Settings]) -> Iterator[Server]:
    """The API with workers and translation jobs (against a fake LLM) on the backend of
    ``storage``, served by uvicorn in an event loop of its own, for a synchronous client
    (hypothesis drives synchronous tests)."""
    with anyio.from_thread.start_blocking_portal() as portal:

        @asynccontextmanager
        async def everything() -> AsyncIterator[tuple[str, TaskManager]]:
            async with fake_llm() as llm:
                settings = settings_factory(
                    storage=storage,
                    providers=provider(llm),
                    background_tasks={"max_queue_size": 10_000},
                )
                app = create_app(settings, setup=setup)
                async with serve(app) as base_url:
                    yield base_url, app.state.manager

        with (
            portal.wrap_async_context_manager(everything()) as (base_url, manager),
            httpx.Client(base_url=base_url, timeout=30) as client,
        ):
            yield Server(client, portal, manager)


def check(response: httpx.Response) -> None:
    request = response.request
    assert response.status_code < 500, (
        f"{request.method} {request.url} {request.content[:300]!r}:"
        f" {response.status_code} {response.text[:1000]}"
    )


def read_everything(client: httpx.Client) -> int:
    """Every list route, then every listed task's own routes: all 200. How many tasks."""
    task_ids: set[str] = set()
    for path in ("active", "completed", "queue/tasks", "queue/running", "dead-letters"):
        response = client.get(f"{TASKS}/{path}", params={"limit": 1000})
        assert response.status_code == 200, (path, response.text[:1000])
        task_ids.update(task["task_id"] for task in response.json()["tasks"])
    jobs = client.get(f"{TASKS}/translation", params={"limit": 1000})
    assert jobs.status_code == 200, jobs.text[:1000]
    for job in jobs.json()["jobs"]:
        assert client.get(f"{TASKS}/translation/{job['job_id']}").status_code == 200
    for task_id in sorted(task_ids):
        for path in (
            f"{TASKS}/status/{task_id}",
            f"{MONITORING}/tasks/{task_id}/progress",
            f"{MONITORING}/tasks/{task_id}/history",
        ):
            response = client.get(path)
            assert response.status_code == 200, (path, response.text[:1000])
    for path in (f"{MONITORING}/summary", f"{TASKS}/statistics", f"{TASKS}/queue/status"):
        assert client.get(path).status_code == 200, path
    return len(task_ids)


Request = tuple[str, str, bytes | None, str | bytes | None]
_corpus: list[Request] = []


def corpus() -> list[Request]:
    """The requests, made by hypothesis once (derandomized: the same on every run) and
    before any server runs: drawing while a server's retries draw jitter from the
    ``random`` module would look to hypothesis like generation depending on outside
    state."""
    if not _corpus:
        examples: list[Request] = []

        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(requests(), idempotency_keys)
        def collect(request: tuple[str, str, bytes | None], key: str | bytes | None) -> None:
            examples.append((*request, key))

        collect()
        _corpus.extend(examples)
    return _corpus


@pytest.fixture
def requests_to_send() -> list[Request]:
    return corpus()


def test_hostile_input_is_never_a_server_error_and_everything_stored_reads_back(
    requests_to_send: list[Request], server: Server
) -> None:
    client = server.client
    accepted: list[str] = []
    answers: Counter[tuple[str, int]] = Counter()
    for method, path, body, key in requests_to_send:
        headers: dict[str, str | bytes] = {}
        if body is not None:
            headers["content-type"] = "application/json"
        if key is not None:
            headers["Idempotency-Key"] = key
        response = client.request(method, path, content=body, headers=headers)
        check(response)
        answers[(path.rsplit("/", 1)[-1][:12], response.status_code)] += 1
        if response.status_code == 202 and path.endswith("/submit"):
            task_id = response.json()["task_id"]
            accepted.append(task_id)
            check(client.get(f"{TASKS}/status/{task_id}"))
        if response.status_code == 422:
            assert response.json()["detail"], response.text
    # The examples reach storage, not only validation.
    assert len(accepted) >= 10, f"only {len(accepted)} submits were accepted: {answers}"
    assert answers[("compare", 200)] >= 3, answers
    # The accepted tasks run to their end (their payloads in an error, then in a result).
    check(client.post(f"{TASKS}/queue/resume"))
    for task_id in accepted:
        server.portal.call(functools.partial(server.manager.wait, task_id, timeout=30))
    assert read_everything(client) >= len(accepted)
