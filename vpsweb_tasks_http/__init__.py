"""HTTP adapter for vpsweb-tasks (FastAPI).

``create_router(manager, monitor)`` gives the documented routes under
``/api/v1/background-tasks`` and ``/api/v1/monitoring`` to include in an existing app;
``create_app(settings)`` is a complete app whose lifespan runs the manager and monitor;
``mount_dashboard(app)`` adds the live web page at ``/dashboard/`` (create_app does).
Install with the ``http`` extra.

The routes live in ``routes/``, one module per route group, declared once at module level.
``create_router`` makes one :class:`~vpsweb_tasks_http.deps.RouterState` (manager, monitor,
stream tokens, API key, ``Retry-After``) and adds every route straight onto one router
with a route class bound to that state: on each request the route puts its state on
``request.state`` before anything else runs. Nothing is read from the host app's
``app.state``, so routers of several managers can share one app; ``create_app`` also
keeps the state as ``app.state.vpsweb_tasks``. The routes of a group behind the API key
(``RouteGroup(api_key=True)``) are guarded by their route class, before the body is read,
and read the state with ``state_of(request)``: FastAPI solves each dependency a route
declares on every request. Other routes receive the state from the dependency that guards
them (``state: Authorised``, ``StreamAuthorised`` or ``Open``), as a FastAPI endpoint
receives its current user from its auth dependency.
"""

from ._routing import RouteGroup
from .app import create_app
from .dashboard import mount_dashboard
from .deps import Authorised, Open, RouterState, StreamAuthorised, state_of
from .routes import create_router

__all__ = [
    "Authorised",
    "Open",
    "RouteGroup",
    "RouterState",
    "StreamAuthorised",
    "create_app",
    "create_router",
    "mount_dashboard",
    "state_of",
]
