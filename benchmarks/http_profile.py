"""Server-side CPU per HTTP request, in process, through ``httpx.ASGITransport``.

    .venv/bin/python benchmarks/http_profile.py              # --requests 2000
    .venv/bin/python benchmarks/http_profile.py --profile    # and cProfile's top functions

Runs ``create_app`` (workers off: only the request path and its storage are measured) and
times, in process CPU seconds (``time.process_time``: every thread, the store's included),
N sequential requests of each kind: ``POST .../submit``, ``GET .../status/{id}``, an
unauthorised ``GET .../queue/status`` (stopped by the API-key guard), the same requests
against a bare ASGI app that answers 200 at once (the client's and the transport's own
cost, subtracted from the others) and ``TaskManager.submit`` called directly (the
library's share of a submit). ``--api-key`` turns the API key on (it is sent).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx

from vpsweb_tasks import TaskContext, TaskDefinition, TaskManager, load_config
from vpsweb_tasks_http import create_app

TASKS = "/api/v1/background-tasks"
KEY_ENV = "HTTP_PROFILE_KEY"


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


async def timed(n: int, call: Callable[[int], Awaitable[Any]]) -> float:
    """CPU seconds per call, after a warm-up of 50 calls."""
    for i in range(50):
        await call(i)
    start = time.process_time()
    for i in range(n):
        await call(i)
    return (time.process_time() - start) / n


async def run(folder: Path, n: int, api_key: bool, profile: bool) -> None:
    http: dict[str, Any] = {"api_key_env": KEY_ENV} if api_key else {}
    if api_key:
        os.environ[KEY_ENV] = "secret"
    settings = load_config(
        storage={"sqlite_path": str(folder / "profile.db")},
        background_tasks={"enabled": False, "max_queue_size": 10 * n + 1000},
        logging={"file": None, "level": "WARNING"},
        http=http,
    )
    app = create_app(settings, setup=lambda manager: manager.task("noop")(noop))
    manager: TaskManager = app.state.manager
    headers = {"X-API-Key": "secret"} if api_key else {}
    body = {"task_name": "t", "task_type": "noop", "payload": {}}
    ids: list[str] = []

    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test", headers=headers
        ) as client,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=bare_app), base_url="http://t") as bare,
    ):

        async def submit(_: int) -> None:
            response = await client.post(f"{TASKS}/submit", json=body)
            assert response.status_code == 202, response.text
            ids.append(response.json()["task_id"])

        async def status(i: int) -> None:
            response = await client.get(f"{TASKS}/status/{ids[i % len(ids)]}")
            assert response.status_code == 200, response.text

        async def unauthorised(_: int) -> None:
            response = await client.get(f"{TASKS}/queue/status", headers={"X-API-Key": "no"})
            assert response.status_code == (401 if api_key else 200), response.text

        async def bare_post(_: int) -> None:
            await bare.post(f"{TASKS}/submit", json=body, headers=headers)

        async def bare_get(_: int) -> None:
            await bare.get(f"{TASKS}/status/x", headers=headers)

        async def library(_: int) -> None:
            context = await manager.submit(TaskDefinition(name="t", task_type="noop"), "noop")
            await context.wait_stored()

        rows = [
            ("bare ASGI app, POST (client + transport)", await timed(n, bare_post), None),
            ("bare ASGI app, GET (client + transport)", await timed(n, bare_get), None),
            ("library submit (manager.submit + stored)", await timed(n, library), None),
        ]
        bare_post_cost, bare_get_cost = rows[0][1], rows[1][1]
        rows.append(("POST submit", submit_cost := await timed(n, submit), bare_post_cost))
        rows.append(("GET status/{id}", await timed(n, status), bare_get_cost))
        rows.append(
            (
                "GET queue/status, wrong key" if api_key else "GET queue/status",
                await timed(n, unauthorised),
                bare_get_cost,
            )
        )

        print(
            f"\n{n} sequential requests each, in process; {os.cpu_count()} CPUs, "
            f"load {os.getloadavg()[0]:.1f}; API key {'on' if api_key else 'off'}"
        )
        header = f"{'request':<44} {'CPU us':>8} {'server us':>10}"
        print(header)
        print("-" * len(header))
        for name, cost, base in rows:
            server = "" if base is None else f"{(cost - base) * 1e6:>10.0f}"
            print(f"{name:<44} {cost * 1e6:>8.0f} {server:>10}")
        library_cost = rows[2][1]
        print(
            f"HTTP overhead of a submit (server - library): "
            f"{(submit_cost - bare_post_cost - library_cost) * 1e6:.0f} us"
        )

        if profile:
            for name, call in (("POST submit", submit), ("GET status", status)):
                profiler = cProfile.Profile()
                profiler.enable()
                for i in range(n):
                    await call(i)
                profiler.disable()
                out = io.StringIO()
                stats = pstats.Stats(profiler, stream=out)
                stats.sort_stats("tottime").print_stats(25)
                print(f"\n--- cProfile, {name}, {n} requests, by own time ---")
                print(out.getvalue().split("\n", 6)[-1][:6000])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--api-key", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--dir", default=".", help="where the temporary database goes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-") as tmp:
        anyio.run(run, Path(tmp), args.requests, args.api_key, args.profile)


if __name__ == "__main__":
    main()
