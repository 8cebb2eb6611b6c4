"""Route groups that add their routes straight to one router.

FastAPI (0.165) includes a router lazily: ``include_router`` adds one ``_IncludedRouter``
that is matched again at each level on every request (and walks every route for each
``url_for``). A :class:`RouteGroup` gives a set of routes a shared prefix, tags,
dependencies and documented responses, as an included router would, but
:meth:`~RouteGroup.add_to` adds them to one flat router: the same routes, in the same
order, with the same OpenAPI schema and behaviour, matched once. A group is declared once,
at module level; each ``add_to`` gives its routes the route class of the router they join.
A group made with ``api_key=True`` is behind the API key: its route class checks the key
before anything else of the route runs (:func:`~vpsweb_tasks_http.deps.behind_api_key`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from copy import deepcopy
from functools import lru_cache
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.params import Depends
from fastapi.routing import APIRoute
from starlette.datastructures import URL

from .deps import API_KEY_PARAMETER, behind_api_key

__all__ = ["RouteGroup", "group_url"]

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


class RouteGroup:
    """Routes declared with ``@group.get(...)`` etc.; :meth:`add_to` adds them to a router
    with ``prefix`` before their paths, ``tags`` and ``dependencies`` before theirs and
    ``responses`` under theirs. With ``api_key``, every route requires header
    ``X-API-Key`` (when the router's state has a key) and a running manager, checked by
    the route class before the body is read; its endpoints read the state with
    :func:`~vpsweb_tasks_http.deps.state_of`, and need no guard of their own. A route's
    own ``api_key=`` (``@group.get(path, api_key=False)``) overrides its group's."""

    def __init__(
        self,
        *,
        prefix: str = "",
        tags: Sequence[str] = (),
        dependencies: Sequence[Depends] = (),
        responses: dict[int | str, dict[str, Any]] | None = None,
        api_key: bool = False,
    ) -> None:
        self.prefix = prefix
        self.api_key = api_key
        self.tags = list(tags)
        self.dependencies = list(dependencies)
        self.responses = dict(responses or {})
        self._routes: list[tuple[str, Callable[..., Any], bool, dict[str, Any]]] = []

    def route(self, method: str, path: str, **options: Any) -> Callable[[Endpoint], Endpoint]:
        api_key = options.pop("api_key", self.api_key)
        tags = [*self.tags, *options.pop("tags", ())]
        dependencies = [*self.dependencies, *options.pop("dependencies", ())]
        responses = {**self.responses, **options.pop("responses", {})}

        def add(endpoint: Endpoint) -> Endpoint:
            self._routes.append(
                (
                    self.prefix + path,
                    endpoint,
                    api_key,
                    {
                        **options,
                        "methods": [method],
                        "tags": tags,
                        "dependencies": dependencies,
                        "responses": responses,
                    },
                )
            )
            return endpoint

        return add

    def add_to(
        self, router: APIRouter, *, route_class: type[APIRoute] = APIRoute, prefix: str = ""
    ) -> None:
        """Adds the group's routes, in the order declared, to ``router`` as ``route_class``,
        with ``prefix`` before the group's own."""
        keyed = None
        for path, endpoint, api_key, options in self._routes:
            if api_key:
                keyed = keyed or behind_api_key(route_class)
                extra = _with_api_key(options.get("openapi_extra"), options["responses"])
                options = {**options, "openapi_extra": extra}
            router.add_api_route(
                prefix + path,
                endpoint,
                route_class_override=keyed if api_key and keyed else route_class,
                **options,
            )

    def get(self, path: str, **options: Any) -> Callable[[Endpoint], Endpoint]:
        return self.route("GET", path, **options)

    def post(self, path: str, **options: Any) -> Callable[[Endpoint], Endpoint]:
        return self.route("POST", path, **options)

    def delete(self, path: str, **options: Any) -> Callable[[Endpoint], Endpoint]:
        return self.route("DELETE", path, **options)


def _with_api_key(
    openapi_extra: dict[str, Any] | None, responses: dict[int | str, Any]
) -> dict[str, Any]:
    """A route's ``openapi_extra`` with the ``X-API-Key`` header its route class reads,
    before its own parameters (where a guard dependency's parameter would be), and the 422
    that FastAPI documents for any route with a parameter."""
    extra = dict(openapi_extra or {})
    extra["parameters"] = [deepcopy(API_KEY_PARAMETER), *extra.get("parameters", ())]
    if not {"422", 422, "4XX", "default"} & set(responses):
        extra["responses"] = {**extra.get("responses", {}), "422": deepcopy(VALIDATION_ERROR)}
    return extra


#: FastAPI's documented 422 (``fastapi.openapi.utils``).
VALIDATION_ERROR: dict[str, Any] = {
    "description": "Validation Error",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
    },
}


def group_url(request: Request, own_path: str) -> str:
    """The absolute URL of the prefix of the route answering ``request``, whose path (after
    its group's prefix) is ``own_path``: ``group_url(request, "/submit") + "/status/ID"``
    is the status route's URL. It comes from the request's own URL, so it carries whatever
    the app is served under (``root_path``), mounted under or included with, and costs a
    string cut where ``request.url_for`` walks every route of the app per link."""
    scope = request.scope
    server = scope.get("server")
    host = next((value for key, value in scope["headers"] if key == b"host"), None)
    return _prefix_url(
        scope.get("scheme", "http"),
        None if server is None else tuple(server),
        host,
        scope["path"],
        own_path,
    )


@lru_cache(maxsize=64)
def _prefix_url(
    scheme: str, server: tuple[str, int] | None, host: bytes | None, path: str, own_path: str
) -> str:
    """:func:`group_url` of the parts of a request's URL, remembered: Starlette parses and
    checks the Host header and builds the URL anew for each request, for the same answer."""
    headers = [] if host is None else [(b"host", host)]
    scope = {"scheme": scheme, "server": server, "path": path, "headers": headers}
    url = str(URL(scope=scope))
    if not url.endswith(own_path):  # pragma: no cover - a route named with the wrong path
        raise ValueError(f"{url} does not end with {own_path}")
    return url[: len(url) - len(own_path)]
