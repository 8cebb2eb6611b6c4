"""Test helpers: a loopback HTTP server that fails on demand, and an event recorder.

The server is a real TCP server on 127.0.0.1 (a free port), speaking just enough
HTTP/1.1 for httpx: it answers each request with the next scripted reply (or the default
one), counts requests, and can hold its replies until the test lets them go, so tests can
see how many calls reached it while others were rejected.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import anyio
from anyio.abc import SocketAttribute, SocketStream

from vpsweb_tasks.events import Event

REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None


class LoopbackServer:
    def __init__(self) -> None:
        self.port = 0
        self.calls = 0
        self.paths: list[str] = []
        self.script: deque[Reply] = deque()
        self.default = Reply()
        self._held: anyio.Event | None = None
        self._changed = anyio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reply(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, then with the default."""
        self.script.extend(replies)

    def always(self, reply: Reply) -> None:
        self.script.clear()
        self.default = reply

    def hold(self) -> None:
        """Keep replies back (requests are still counted) until :meth:`release`."""
        self._held = anyio.Event()

    def release(self) -> None:
        if self._held is not None:
            self._held.set()
            self._held = None

    async def wait_for_calls(self, count: int, *, timeout: float = 10) -> None:
        with anyio.fail_after(timeout):
            while self.calls < count:
                await self._changed.wait()

    async def _handle(self, stream: SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                try:
                    data += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
            request_line = data.split(b"\r\n", 1)[0].decode()
            self.paths.append(request_line.split(" ")[1])
            self.calls += 1
            number = self.calls
            reply = self.script.popleft() if self.script else self.default
            self._changed.set()
            self._changed = anyio.Event()
            if self._held is not None:
                await self._held.wait()
            body = reply.body if reply.body is not None else {"call": number}
            await send_json(stream, reply.status, body, reply.headers)


class Served(Protocol):
    port: int

    async def _handle(self, stream: SocketStream) -> None: ...

    def release(self) -> None: ...


S = TypeVar("S", bound=Served)


async def send_json(
    stream: SocketStream, status: int, data: Any, headers: dict[str, str] | None = None
) -> None:
    """One HTTP/1.1 response with a JSON body, then the connection is closed."""
    payload = json.dumps(data).encode()
    fields = {
        "Content-Type": "application/json",
        "Content-Length": str(len(payload)),
        "Connection": "close",
        **(headers or {}),
    }
    head = f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n"
    head += "".join(f"{key}: {value}\r\n" for key, value in fields.items())
    with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        await stream.send(head.encode() + b"\r\n" + payload)


@asynccontextmanager
async def serving(server: S) -> AsyncIterator[S]:
    """Serve ``server._handle`` on a free loopback port until the block ends; held
    replies are released first."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        server.port = listener.extra(SocketAttribute.local_port)
        tg.start_soon(listener.serve, server._handle)
        try:
            yield server
        finally:
            server.release()
            tg.cancel_scope.cancel()


def loopback_server() -> AbstractAsyncContextManager[LoopbackServer]:
    return serving(LoopbackServer())


async def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port: int = listener.extra(SocketAttribute.local_port)
    await listener.aclose()
    return port


class EventRecorder:
    """Collects events (as a hub or registry listener) and lets a test wait for them."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._changed = anyio.Event()

    def __call__(self, event: Any) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = anyio.Event()

    def of(self, kind: type[Event], **fields: Any) -> list[Any]:
        return [
            event
            for event in self.events
            if isinstance(event, kind)
            and all(getattr(event, key) == value for key, value in fields.items())
        ]

    async def wait_for(
        self, kind: type[Event], count: int = 1, *, timeout: float = 10, **fields: Any
    ) -> list[Any]:
        """Wait until ``count`` events of ``kind`` (with these field values) were seen."""
        with anyio.fail_after(timeout):
            while len(found := self.of(kind, **fields)) < count:
                await self._changed.wait()
        return found

    async def wait_until(
        self, predicate: Callable[[list[Any]], bool], *, timeout: float = 10
    ) -> None:
        with anyio.fail_after(timeout):
            while not predicate(self.events):
                await self._changed.wait()


def kinds(events: Iterable[Event]) -> list[str]:
    return [event.kind for event in events]
