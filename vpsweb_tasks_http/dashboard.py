"""The dashboard: one static page (HTML, CSS, ES modules; no build step, no CDN) that reads
the JSON routes and follows the event stream.

``mount_dashboard(app)`` serves it at ``/dashboard/``. The page learns three things from
``<meta>`` tags filled in here: where the API is (``vpsweb-api-base``, so it also works when
the app is mounted under a prefix), whether to ask for the API key before its first call
(``vpsweb-api-key``), and which optional route groups the app has (``vpsweb-features``:
``translation`` once the translation routes exist), so that it does not probe for them.
"""

from __future__ import annotations

import html
from pathlib import Path
from string import Template

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.routing import NoMatchFound

__all__ = ["STATIC_DIR", "mount_dashboard"]

STATIC_DIR = Path(__file__).parent / "static"


def _features(app: FastAPI) -> list[str]:
    # By route name: routers are included lazily, so app.routes does not list their paths.
    try:
        app.url_path_for("translation_status", job_id="-")
    except NoMatchFound:
        return []
    return ["translation"]


def mount_dashboard(
    app: FastAPI,
    path: str = "/dashboard",
    *,
    api_base: str = "",
    api_key_required: bool = False,
) -> None:
    """Serve the dashboard at ``{path}/`` (and its files below it). ``api_base`` is the
    prefix under which the app serves ``/api/v1/...`` (empty when at its root);
    ``api_key_required`` makes the page ask for the key before its first call."""
    path = "/" + path.strip("/")
    api_base = api_base.rstrip("/")
    page = Template((STATIC_DIR / "index.html").read_text(encoding="utf-8"))

    @app.get(path + "/", include_in_schema=False)
    async def dashboard(request: Request) -> HTMLResponse:
        values = {
            "api_base": str(request.scope.get("root_path", "")) + api_base,
            "api_key": "required" if api_key_required else "",
            "features": " ".join(_features(app)),
        }
        body = page.substitute({k: html.escape(v, quote=True) for k, v in values.items()})
        return HTMLResponse(body, headers={"Cache-Control": "no-cache"})

    app.mount(path, StaticFiles(directory=STATIC_DIR), name="dashboard")
