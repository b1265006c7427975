"""/dashboard: one static page (plain HTML + a little JS, no build step) over the public API.

The page itself holds no data, so it is served without auth; its script asks for an API key,
keeps it in sessionStorage and sends it as a Bearer header on every API call.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

router = APIRouter(tags=["dashboard"])

STATIC = Path(__file__).resolve().parents[2] / "static"
# The script is a separate file so the policy can forbid inline scripts; images are blob: URLs
# made from authenticated fetches.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@cache
def _asset(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def _static(name: str, media_type: str) -> Response:
    return Response(_asset(name), media_type=media_type,
                    headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                             "Cache-Control": "no-cache"})


@router.get("/dashboard", include_in_schema=False)
def dashboard() -> Response:
    return _static("dashboard.html", "text/html; charset=utf-8")


@router.get("/dashboard/app.js", include_in_schema=False)
def dashboard_js() -> Response:
    return _static("dashboard.js", "text/javascript; charset=utf-8")


@router.get("/dashboard/style.css", include_in_schema=False)
def dashboard_css() -> Response:
    return _static("dashboard.css", "text/css; charset=utf-8")
