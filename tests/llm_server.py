"""A real OpenAI-compatible chat-completions server on loopback, for translation tests.

It speaks just enough HTTP/1.1 for httpx (one request per connection) and answers
``POST /v1/chat/completions`` and ``GET /v1/models``. Every chat call is recorded (model,
messages), and the next replies can be scripted, per model or for any model: a normal
completion, an HTTP error status with headers (500, 429 + Retry-After, 401...), a dropped
connection, or a reply held back until the test releases it (a held call whose client
goes away is counted as a disconnect).
"""

from __future__ import annotations

import json
import time
from collections import deque
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from .support import send_json, serving


@dataclass(frozen=True)
class Reply:
    """``status`` 200 answers a completion (``content`` or a default one); ``drop``
    closes the connection without an answer; ``hold`` waits for :meth:`FakeLLM.release`."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content: str | None = None
    drop: bool = False
    hold: bool = False
    usage: dict[str, int] | None = field(
        default_factory=lambda: {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    )
    """What the answer reports as its token usage (None: no usage field at all)."""


OK = Reply()
DROP = Reply(drop=True)
HOLD = Reply(hold=True)


@dataclass(frozen=True)
class Call:
    number: int
    model: str
    messages: list[dict[str, str]]
    authorization: str | None
    at: float = 0.0
    """When the server received it (time.monotonic())."""


class FakeLLM:
    def __init__(self) -> None:
        self.port = 0
        self.calls: list[Call] = []
        self.answered = 0
        self.disconnects = 0
        self.models_listed = ["m-initial", "m-editor", "m-revision", "m-reasoning"]
        self._script: deque[Reply] = deque()
        self._by_model: dict[str, deque[Reply]] = {}
        self.default = OK
        self._release = anyio.Event()
        self._changed = anyio.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # --- scripting ----------------------------------------------------------------------

    def reply(self, *replies: Reply, model: str | None = None) -> None:
        """The next calls (of ``model``, or any) get these replies, then the default."""
        if model is None:
            self._script.extend(replies)
        else:
            self._by_model.setdefault(model, deque()).extend(replies)

    def always(self, reply: Reply) -> None:
        self._script.clear()
        self._by_model.clear()
        self.default = reply

    def release(self) -> None:
        """Let every held reply go (and those held later, until the next hold)."""
        self._release.set()
        self._release = anyio.Event()

    def calls_for(self, model: str) -> int:
        return sum(call.model == model for call in self.calls)

    # --- waiting --------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_until(self, predicate: Any, *, timeout: float = 10) -> None:
        with anyio.fail_after(timeout):
            while not predicate(self):
                await self._changed.wait()

    async def wait_for_calls(self, count: int, *, timeout: float = 10) -> None:
        await self.wait_until(lambda s: len(s.calls) >= count, timeout=timeout)

    # --- serving --------------------------------------------------------------------------

    def _next(self, model: str) -> Reply:
        queued = self._by_model.get(model)
        if queued:
            return queued.popleft()
        if self._script:
            return self._script.popleft()
        return self.default

    async def _handle(self, stream: SocketStream) -> None:
        async with stream:
            buffered = BufferedByteReceiveStream(stream)
            try:
                head = await buffered.receive_until(b"\r\n\r\n", 65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.IncompleteRead):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            body = await buffered.receive_exactly(length) if length else b""
            if method == "GET" and path.endswith("/models"):
                data = {"object": "list", "data": [{"id": m} for m in self.models_listed]}
                await send_json(stream, 200, data)
                return
            if method != "POST" or not path.endswith("/chat/completions"):
                await send_json(stream, 404, {"error": {"message": "no such route"}})
                return
            request = json.loads(body)
            call = Call(
                number=len(self.calls) + 1,
                model=request["model"],
                messages=request["messages"],
                authorization=headers.get("authorization"),
                at=time.monotonic(),
            )
            self.calls.append(call)
            reply = self._next(call.model)
            self._notify()
            if reply.hold and not await self._held(buffered):
                return
            if reply.drop:
                return  # closed without a word
            if reply.status != 200:
                error = {"error": {"message": f"scripted {reply.status}"}}
                await send_json(stream, reply.status, error, reply.headers)
                return
            content = reply.content or (
                f"<translation>{call.model} translation, call {call.number}</translation>"
                f"<notes>notes from {call.model}</notes>"
            )
            completion = {
                "id": f"chatcmpl-{call.number}",
                "object": "chat.completion",
                "model": call.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
            }
            if reply.usage is not None:
                completion["usage"] = reply.usage
            await send_json(stream, 200, completion, reply.headers)
            self.answered += 1
            self._notify()

    async def _held(self, buffered: BufferedByteReceiveStream) -> bool:
        """Wait for release; False if the client went away first."""
        released = self._release
        gone = False
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                nonlocal gone
                try:
                    await buffered.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    gone = True
                    self.disconnects += 1
                    self._notify()
                    tg.cancel_scope.cancel()

            tg.start_soon(watch)
            await released.wait()
            tg.cancel_scope.cancel()
        return not gone


def fake_llm() -> AbstractAsyncContextManager[FakeLLM]:
    return serving(FakeLLM())
