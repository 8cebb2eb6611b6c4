"""A real uvicorn server on a free loopback port, inside the test's event loop."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import uvicorn
from fastapi import FastAPI

#: How long the server keeps an idle connection open: well past httpx's keepalive_expiry,
#: so a client always drops an idle connection before the server does. At equal times a
#: request sent as the server closes the connection fails with ReadError.
KEEP_ALIVE_SECONDS = 60


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """Run ``app`` (lifespan included) until the block ends; yields its base URL."""
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on sockets that say they
    # are TCP, and without it every keep-alive response waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
    server = uvicorn.Server(config)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            with anyio.fail_after(10):
                # uvicorn exposes no event for "started"; poll its flag.
                while not server.started:  # noqa: ASYNC110
                    await anyio.sleep(0.005)
            try:
                yield f"http://127.0.0.1:{port}"
            finally:
                server.should_exit = True
    finally:
        sock.close()
