"""HTTP adapter for vpsweb-tasks (FastAPI).

``create_router(manager, monitor)`` gives the documented routes under
``/api/v1/background-tasks`` and ``/api/v1/monitoring`` to include in an existing app;
``create_app(settings)`` is a complete app whose lifespan runs the manager and monitor;
``mount_dashboard(app)`` adds the live web page at ``/dashboard/`` (create_app does).
Install with the ``http`` extra.
"""

from .app import create_app
from .dashboard import mount_dashboard
from .routes import create_router

__all__ = ["create_app", "create_router", "mount_dashboard"]
