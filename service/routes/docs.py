"""GET /docs: the interactive API documentation (Swagger UI) with every asset served by this
service, from the `fastapi-offline` package's copy: no script from a CDN runs on the origin
where the page keeps its API key, and the docs work offline. Its start-up script is a file
too, as the Content-Security-Policy (`service.hardening`) allows no inline script."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
ASSETS_PATH = "/docs/assets"

PAGE = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>adain-serve: API</title>
  <link rel="icon" href="{ASSETS_PATH}/favicon.png">
  <link rel="stylesheet" href="{ASSETS_PATH}/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{ASSETS_PATH}/swagger-ui-bundle.js"></script>
  <script src="/docs/start.js"></script>
</body>
</html>
"""
START = """SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
"""

router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def docs() -> HTMLResponse:
    return HTMLResponse(PAGE)


@router.get("/docs/start.js")
async def docs_start() -> Response:
    return Response(START, media_type="text/javascript")


def docs_assets() -> StaticFiles:
    return StaticFiles(directory=ASSETS_DIR)
