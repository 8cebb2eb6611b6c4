"""How a route reaches its router's manager and monitor, and how it is guarded.

The routes are declared once, at module level, so they cannot close over a manager.
:func:`~vpsweb_tasks_http.create_router` makes one :class:`RouterState` per router and adds
the routes with :func:`route_class` of it: that route class puts the state on
``request.state`` before anything else of the route runs (then answers the library's
exceptions and invalid requests, :mod:`.errors`), and an endpoint reads it with
:func:`state_of`. Each route carries its own router's state: two routers of two managers
in one app each reach their own, and the host app's ``app.state`` is never touched.

Every route is guarded, in one of two ways; each answers 401 and then 503 (not running)
first, so no endpoint reaches a manager without its guard:

* the routes of a :class:`~vpsweb_tasks_http.RouteGroup` made with ``api_key=True`` (our
  own groups behind the key) are guarded by their route class (:func:`behind_api_key`),
  before the body is read, in :func:`check_api_key_route`;
* any other route takes the state from the dependency that guards it, as FastAPI's
  endpoints take the current user from their auth dependency: ``state: Authorised`` (the
  API key), ``StreamAuthorised`` (the key or a stream token) or ``Open`` (the health
  checks). Extensions' routes may use either.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

from fastapi import Depends, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from vpsweb_tasks import TaskManager, TaskMonitor
from vpsweb_tasks.config import check_api_key

from .auth import StreamTokens
from .errors import (
    LIBRARY_ERRORS,
    error_response,
    unparsable_body_response,
    validation_error_response,
)

__all__ = [
    "API_KEY_PARAMETER",
    "Authorised",
    "Open",
    "RouterState",
    "StreamAuthorised",
    "authorised",
    "behind_api_key",
    "check_api_key_route",
    "route_class",
    "running",
    "state_of",
    "stream_authorised",
]


@dataclass(frozen=True, slots=True)
class RouterState:
    """What the routes of one router share."""

    manager: TaskManager
    monitor: TaskMonitor
    tokens: StreamTokens
    """Issues and checks the event streams' ``?token=``."""
    api_key: bytes | None = field(default=None, repr=False)
    """The expected ``X-API-Key``; None: the routes are open."""
    queue_full_retry_after: int = 5
    """The ``Retry-After`` of a 429, in seconds."""
    storage_retry_after: int = 5
    """The ``Retry-After`` of a 503 for a storage fault, in seconds."""

    @classmethod
    def create(
        cls,
        manager: TaskManager,
        monitor: TaskMonitor,
        *,
        api_key: str | None = None,
        queue_full_retry_after: int = 5,
        storage_retry_after: int = 5,
        stream_token_ttl: float = 60.0,
    ) -> RouterState:
        return cls(
            manager=manager,
            monitor=monitor,
            tokens=StreamTokens(api_key, ttl=stream_token_ttl),
            api_key=None if api_key is None else check_api_key(api_key).encode(),
            queue_full_retry_after=queue_full_retry_after,
            storage_retry_after=storage_retry_after,
        )


class _StateRoute(APIRoute):
    """An APIRoute of one router: see the module docstring."""

    router_state: ClassVar[RouterState]
    checks_api_key: ClassVar[bool] = False

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        state = self.router_state
        checks_api_key = self.checks_api_key
        retry_after = state.queue_full_retry_after
        storage_retry_after = state.storage_retry_after

        async def route(request: Request) -> Response:
            request.state.vpsweb_tasks = state
            try:
                if checks_api_key:
                    check_api_key_route(state, request)
                return await handler(request)
            except LIBRARY_ERRORS as exc:
                return error_response(
                    exc, retry_after=retry_after, storage_retry_after=storage_retry_after
                )
            except RequestValidationError as exc:
                return validation_error_response(exc.errors())
            except StarletteHTTPException as exc:  # FastAPI's body parsing raises Starlette's
                answer = unparsable_body_response(exc)
                if answer is None:
                    raise
                return answer

        return route


def route_class(state: RouterState) -> type[APIRoute]:
    """The route class of the routes of ``state``'s router."""
    return type("StateRoute", (_StateRoute,), {"router_state": state})


def behind_api_key(route: type[APIRoute]) -> type[APIRoute]:
    """``route`` (a :func:`route_class`), for the routes of a group behind the API key:
    :func:`check_api_key_route` runs before anything else of the route."""
    if not issubclass(route, _StateRoute):
        raise TypeError(
            "a RouteGroup with api_key=True needs the route class of a router's state"
            " (vpsweb_tasks_http.deps.route_class): nothing else would check the key"
        )
    return type(route.__name__, (route,), {"checks_api_key": True})


def check_api_key_route(state: RouterState, request: Request) -> None:
    """The guard of a route behind the API key, run by its route class rather than as a
    dependency: FastAPI solves a dependency and its header parameter anew on every request
    (the cost is in ``benchmarks/README.md``)."""
    _check_key(state, request.headers.get("x-api-key"))
    _check_running(state)


#: How the routes of an ``api_key`` group document the header their route class reads:
#: as FastAPI documents the ``X-API-Key`` header parameter of :func:`authorised`.
API_KEY_PARAMETER: dict[str, Any] = {
    "name": "x-api-key",
    "in": "header",
    "required": False,
    "schema": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "X-Api-Key"},
}


def state_of(request: Request) -> RouterState:
    """The state of the router whose route answers ``request``."""
    state: RouterState = request.state.vpsweb_tasks
    return state


def _check_running(state: RouterState) -> None:
    if not state.manager.running:
        raise HTTPException(503, "the task manager is not running yet")


def _check_key(state: RouterState, x_api_key: str | None) -> None:
    expected = state.api_key
    if expected is None:
        return
    # The header's bytes, as sent (Starlette decodes headers as latin-1), against the key's
    # UTF-8: a non-ASCII key matches when a client sends it in UTF-8.
    if x_api_key is None or not hmac.compare_digest(x_api_key.encode("latin-1"), expected):
        raise HTTPException(
            401, "missing or wrong X-API-Key", headers={"WWW-Authenticate": "X-API-Key"}
        )


# Each guard is one dependency (key, then running: 401 before 503), not two, and gives the
# state: FastAPI solves every dependency a route declares on every request, even a cached
# one, so a state dependency beside the guard would cost a second solve. (async: FastAPI
# would run a plain function in a worker thread.)


async def running(request: Request) -> RouterState:
    """The open routes (health checks): 503 until the manager runs."""
    state = state_of(request)
    _check_running(state)
    return state


async def authorised(
    request: Request, x_api_key: Annotated[str | None, Header()] = None
) -> RouterState:
    """The routes behind the API key (compared in constant time)."""
    state = state_of(request)
    _check_key(state, x_api_key)
    _check_running(state)
    return state


async def stream_authorised(
    request: Request,
    x_api_key: Annotated[str | None, Header()] = None,
    token: Annotated[
        str | None,
        # No constraint here: a constraint that fails skips this guard, and the route's
        # next dependency (the task's 404) would answer a caller without the key.
        Query(description="A token from POST .../monitoring/stream-token"),
    ] = None,
) -> RouterState:
    """The event streams: the API key, or a stream token (an EventSource sends no header)."""
    state = state_of(request)
    if not (token is not None and state.api_key is not None and state.tokens.valid(token)):
        _check_key(state, x_api_key)
    _check_running(state)
    return state


#: The state of an open route's router, once the manager runs.
Open = Annotated[RouterState, Depends(running)]
#: The state of a route behind the API key, once the key is checked.
Authorised = Annotated[RouterState, Depends(authorised)]
#: The state of an event stream, once the key or the stream token is checked.
StreamAuthorised = Annotated[RouterState, Depends(stream_authorised)]
