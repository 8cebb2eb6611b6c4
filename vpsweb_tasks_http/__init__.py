"""HTTP adapter for vpsweb-tasks (FastAPI): the routes under /api/v1/background-tasks and
/api/v1/monitoring. Install with the ``http`` extra."""
