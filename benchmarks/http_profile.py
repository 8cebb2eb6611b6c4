"""Server-side CPU per HTTP request, in process, through ``httpx.ASGITransport``.

    .venv/bin/python benchmarks/http_profile.py              # --requests 2000
    .venv/bin/python benchmarks/http_profile.py --profile    # and cProfile's top functions

Runs ``create_app`` (workers off: only the request path and its storage are measured) and
times, in process CPU seconds (``time.process_time``: every thread, the store's included;
the least of ``--rounds`` rounds of N/rounds), N sequential requests of each kind:
``POST .../submit``, ``GET .../status/{id}``, ``POST .../translation`` (a translation job:
its task and job row) and ``GET .../queue/status`` with a wrong key (stopped by the API-key
guard), each

* through httpx's ``ASGITransport``, less the same request to a bare ASGI app that answers
  at once (the client's and the transport's own cost), and
* "direct": the ASGI app called as a server calls it, with a prepared scope (no client);

and ``TaskManager.submit`` called directly (the library's share of a submit).
``--api-key`` turns the API key on (it is sent). To compare with another checkout, run
this script with that checkout's interpreter (``<checkout>/.venv/bin/python``: an editable
install is found before ``PYTHONPATH``).

Beside our submit route it measures, the same two ways, the baseline of issue 22: a bare
FastAPI app (:func:`baseline_app`: no middleware, no body limit, no guard, no route class)
with one ``POST`` route that validates the same body (our own ``SubmitTaskRequest``: the
same fields, constraints and validators, not a copy that could drift), submits it to the
same manager and answers 202 with the task id; with ``--api-key`` it checks the header in
a plain dependency. It prints our submit's CPU over the baseline's.

``--before <checkout>`` also builds that checkout's ``vpsweb_tasks_http`` app (on the same
manager, core library and database) and times its submit, status and translation routes
in the same rounds: a change's before and after from one run. ``--direct-only`` leaves out
the calls through httpx, for quicker rounds on a busy machine.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import io
import json
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import anyio
import httpx
from fastapi import Depends, FastAPI, Header, HTTPException

from vpsweb_tasks import TaskContext, TaskDefinition, TaskManager, load_config
from vpsweb_tasks_http import create_app
from vpsweb_tasks_http.schemas import SubmitTaskRequest

TASKS = "/api/v1/background-tasks"
KEY_ENV = "HTTP_PROFILE_KEY"
MODELS = {
    "initial_translation": "m",
    "editor_review": "m",
    "translator_revision": "m",
    "reasoning": "m",
}
TRANSLATION = {
    "original_text": "Hello world, how are you?",
    "source_language": "en",
    "target_language": "zh-Hans",
    "workflow_mode": "hybrid",
}


async def noop(context: TaskContext) -> None:
    return None


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The cheapest ASGI answer: what the client and transport cost on their own."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def baseline_app(manager: TaskManager, api_key: str | None) -> FastAPI:
    """Issue 22's yardstick: the plainest FastAPI endpoint that validates our submit body,
    submits it to ``manager`` and answers 202 once it is stored."""

    async def check_key(x_api_key: Annotated[str | None, Header()] = None) -> None:
        if api_key is not None and x_api_key != api_key:
            raise HTTPException(401, "missing or wrong X-API-Key")

    app = FastAPI()
    guard = [] if api_key is None else [Depends(check_key)]

    @app.post("/submit", status_code=202, dependencies=guard)
    async def submit(body: SubmitTaskRequest) -> dict[str, str]:
        definition = TaskDefinition(
            name=body.task_name,
            task_type=body.task_type,
            priority=body.priority,
            max_retries=body.max_retries,
            timeout_seconds=body.timeout_seconds,
            metadata=body.metadata,
            delay=body.delay_seconds,
            run_at=body.run_at,
            queue=body.queue,
            depends_on=tuple(body.depends_on),
            on_dependency_failure=body.on_dependency_failure,
            concurrency_key=body.concurrency_key,
        )
        context = await manager.submit(definition, body.task_type, **body.payload)
        record = await context.wait_stored()
        return {"task_id": record.id, "status": record.status.value}

    return app


def other_app(checkout: Path, manager: TaskManager) -> Any:
    """The app of another checkout's ``vpsweb_tasks_http`` (say, main's) on ``manager``,
    beside this one's in one process (the core library stays this one's): our routes
    before and after a change, measured in the same rounds."""
    ours = {name: m for name, m in sys.modules.items() if name.split(".")[0] == PACKAGE}
    editable = [f for f in sys.meta_path if getattr(f, "__name__", "") == "_EditableFinder"]
    for name in ours:
        del sys.modules[name]
    for finder in editable:  # it would find this checkout's package first
        sys.meta_path.remove(finder)
    sys.path.insert(0, str(checkout))
    try:
        package = importlib.import_module(PACKAGE)
        assert Path(str(package.__file__)).is_relative_to(checkout), package.__file__
        return package.create_app(manager=manager)
    finally:
        sys.path.remove(str(checkout))
        sys.meta_path.extend(editable)
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]
        sys.modules.update(ours)


PACKAGE = "vpsweb_tasks_http"


class Direct:
    """Calls the ASGI app itself, as a server would (no client): the server's CPU alone."""

    def __init__(self, app: Any, headers: dict[str, str]) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def request(self, method: str, path: str, body: bytes = b"") -> int:
        headers = [(b"host", b"test"), *self.headers]
        if body:
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 1),
            "server": ("test", 80),
        }
        sent = False
        status = 0

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await anyio.sleep_forever()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await self.app(scope, receive, send)
        return status


Call = Callable[[int], Awaitable[Any]]


async def timed(n: int, calls: dict[str, Call], rounds: int = 5) -> dict[str, float]:
    """CPU seconds per call of each, after a warm-up of 50 calls: the least of ``rounds``
    rounds of ``n / rounds`` calls, the kinds taking turns (other processes on the machine
    only ever add to a round's time)."""
    for call in calls.values():
        for i in range(50):
            await call(i)
    per_round = max(1, n // rounds)
    best = dict.fromkeys(calls, float("inf"))
    for r in range(rounds):
        for name, call in calls.items():
            start = time.process_time()
            for i in range(r * per_round, (r + 1) * per_round):
                await call(i)
            best[name] = min(best[name], (time.process_time() - start) / per_round)
    return best


async def run(
    folder: Path,
    n: int,
    api_key: bool,
    profile: bool,
    rounds: int,
    direct_only: bool,
    before: Path | None,
) -> None:
    http: dict[str, Any] = {"api_key_env": KEY_ENV} if api_key else {}
    if api_key:
        os.environ[KEY_ENV] = "secret"
    settings = load_config(
        storage={"sqlite_path": str(folder / "profile.db")},
        background_tasks={"enabled": False, "max_queue_size": 100 * n + 1000},
        logging={"file": None, "level": "WARNING"},
        http=http,
        # Never called (workers are off): translation submits only need one configured.
        providers={"local": {"base_url": "http://127.0.0.1:9/v1", "models": MODELS}},
    )
    app = create_app(settings, setup=lambda manager: manager.task("noop")(noop))
    manager: TaskManager = app.state.manager
    headers = {"X-API-Key": "secret"} if api_key else {}
    body = {"task_name": "t", "task_type": "noop", "payload": {}}
    raw_body = json.dumps(body).encode()
    ids: list[str] = []
    direct = Direct(app, headers)
    wrong_key = Direct(app, {"X-API-Key": "no"})
    baseline = baseline_app(manager, "secret" if api_key else None)
    direct_baseline = Direct(baseline, headers)
    direct_before = None if before is None else Direct(other_app(before, manager), headers)
    refused = 401 if api_key else 200

    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test", headers=headers
        ) as client,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=bare_app), base_url="http://t") as bare,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=baseline), base_url="http://test", headers=headers
        ) as baseline_client,
    ):
        first = await client.post(f"{TASKS}/submit", json=body)
        ids.append(first.json()["task_id"])

        async def submit(_: int) -> None:
            response = await client.post(f"{TASKS}/submit", json=body)
            assert response.status_code == 202, response.text

        async def baseline_submit(_: int) -> None:
            response = await baseline_client.post("/submit", json=body)
            assert response.status_code == 202, response.text

        async def direct_baseline_submit(_: int) -> None:
            assert await direct_baseline.request("POST", "/submit", raw_body) == 202

        async def status(i: int) -> None:
            response = await client.get(f"{TASKS}/status/{ids[0]}")
            assert response.status_code == 200, response.text

        async def unauthorised(_: int) -> None:
            response = await client.get(f"{TASKS}/queue/status", headers={"X-API-Key": "no"})
            assert response.status_code == refused, response.text

        async def direct_submit(_: int) -> None:
            assert await direct.request("POST", f"{TASKS}/submit", raw_body) == 202

        async def direct_status(_: int) -> None:
            assert await direct.request("GET", f"{TASKS}/status/{ids[0]}") == 200

        raw_translation = json.dumps(TRANSLATION).encode()

        async def translation(_: int) -> None:
            response = await client.post(f"{TASKS}/translation", json=TRANSLATION)
            assert response.status_code == 202, response.text

        async def direct_translation(_: int) -> None:
            assert await direct.request("POST", f"{TASKS}/translation", raw_translation) == 202

        async def direct_unauthorised(_: int) -> None:
            assert await wrong_key.request("GET", f"{TASKS}/queue/status") == refused

        async def bare_post(_: int) -> None:
            await bare.post(f"{TASKS}/submit", json=body, headers=headers)

        async def bare_get(_: int) -> None:
            await bare.get(f"{TASKS}/status/x", headers=headers)

        async def library(_: int) -> None:
            context = await manager.submit(TaskDefinition(name="t", task_type="noop"), "noop")
            await context.wait_stored()

        calls: dict[str, Call] = {
            "library": library,
            "direct submit": direct_submit,
            "direct baseline": direct_baseline_submit,
            "direct status": direct_status,
            "direct unauthorised": direct_unauthorised,
            "direct translation": direct_translation,
        }
        if direct_before is not None:
            before_app = direct_before

            async def before_submit(_: int) -> None:
                assert await before_app.request("POST", f"{TASKS}/submit", raw_body) == 202

            async def before_status(_: int) -> None:
                assert await before_app.request("GET", f"{TASKS}/status/{ids[0]}") == 200

            async def before_translation(_: int) -> None:
                path = f"{TASKS}/translation"
                assert await before_app.request("POST", path, raw_translation) == 202

            calls |= {
                "before submit": before_submit,
                "before status": before_status,
                "before translation": before_translation,
            }
        if not direct_only:
            calls |= {
                "bare post": bare_post,
                "bare get": bare_get,
                "submit": submit,
                "baseline": baseline_submit,
                "status": status,
                "translation": translation,
                "unauthorised": unauthorised,
            }
        cost = await timed(n, calls, rounds)

        print(
            f"\n{n} sequential requests each (least of {rounds} rounds), in process;"
            f" {os.cpu_count()} CPUs, "
            f"load {os.getloadavg()[0]:.1f}; API key {'on' if api_key else 'off'}"
        )
        header = f"{'request':<36} {'httpx us':>9} {'- client':>9} {'direct us':>10}"
        print(header)
        print("-" * len(header))
        print(f"{'library submit (no HTTP)':<36} {'':>9} {'':>9} {cost['library'] * 1e6:>10.0f}")
        for label, kind, base in (
            ("POST submit", "submit", "bare post"),
            ("POST submit, baseline (bare FastAPI)", "baseline", "bare post"),
            ("GET status/{id}", "status", "bare get"),
            ("POST translation", "translation", "bare post"),
            (
                "GET queue/status, " + ("wrong key (401)" if api_key else "no key"),
                "unauthorised",
                "bare get",
            ),
        ):
            through = ""
            if not direct_only:
                through = f"{cost[kind] * 1e6:>9.0f} {(cost[kind] - cost[base]) * 1e6:>9.0f}"
            print(f"{label:<36} {through:>19} {cost['direct ' + kind] * 1e6:>10.0f}")
        ours = cost["direct submit"] / cost["direct baseline"]
        if direct_before is not None:
            print(f"the same, direct, with {before}'s {PACKAGE} (same rounds):")
            for label, kind in (
                ("POST submit", "submit"),
                ("GET status/{id}", "status"),
                ("POST translation", "translation"),
            ):
                was, now = cost["before " + kind], cost["direct " + kind]
                print(f"{label:<36} {was * 1e6:>9.0f} us before, now {now / was - 1:+.1%}")
            was = cost["before submit"] / cost["direct baseline"]
            print(f"submit over baseline before: {was:.2f}x direct")
        if direct_only:
            print(f"submit over baseline: {ours:.2f}x direct (issue 22: <= 1.5x)")
        else:
            print(
                f"client + transport alone (bare ASGI app): POST {cost['bare post'] * 1e6:.0f}"
                f" us, GET {cost['bare get'] * 1e6:.0f} us"
            )
            less = (cost["submit"] - cost["bare post"]) / (cost["baseline"] - cost["bare post"])
            print(
                f"submit over baseline: {ours:.2f}x direct, {less:.2f}x through httpx less"
                " the client (issue 22: <= 1.5x)"
            )

        if profile:
            for name, call in (
                ("POST submit", direct_submit),
                ("POST submit, baseline", direct_baseline_submit),
                ("GET status", direct_status),
            ):
                profiler = cProfile.Profile()
                profiler.enable()
                for i in range(n):
                    await call(i)
                profiler.disable()
                out = io.StringIO()
                stats = pstats.Stats(profiler, stream=out)
                stats.sort_stats("tottime").print_stats(25)
                stats.sort_stats("cumulative").print_stats("vpsweb_tasks|fastapi|starlette", 40)
                print(f"\n--- cProfile, {name}, {n} direct calls (coroutine resumptions count as")
                print("calls): by own time, then by cumulative time in the server's code ---")
                print(out.getvalue().split("\n", 6)[-1].replace(site, ""))


site = str(Path(httpx.__file__).parent.parent) + "/"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--api-key", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--rounds", type=int, default=5, help="the least of this many rounds counts"
    )
    parser.add_argument(
        "--direct-only",
        action="store_true",
        help="only the direct calls (no client): quicker rounds, for A/B runs on a busy machine",
    )
    parser.add_argument(
        "--before",
        type=Path,
        help="a checkout whose vpsweb_tasks_http to measure beside this one's, in the same"
        " process and rounds (direct calls)",
    )
    parser.add_argument("--dir", default=".", help="where the temporary database goes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-") as tmp:
        anyio.run(
            run,
            Path(tmp),
            args.requests,
            args.api_key,
            args.profile,
            args.rounds,
            args.direct_only,
            args.before.resolve() if args.before else None,
        )


if __name__ == "__main__":
    main()
