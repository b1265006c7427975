"""/healthz (the process is up), /readyz (database and broker reachable), /metrics."""

from __future__ import annotations

import os

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import text

from app.api.errors import problem_response, request_instance
from app.core import problems
from app.core.config import Settings
from app.db import repo
from app.db.migrate import current_revision, head_revision

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


def _check_db(request: Request) -> str | None:
    settings: Settings = request.app.state.settings
    try:
        with request.app.state.sessionmaker() as s:
            s.execute(text("SELECT 1"))
        current, head = current_revision(settings), head_revision(settings)
        if current != head:
            return f"schema at {current}, code needs {head}"
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"
    return None


def _check_broker(request: Request) -> str | None:
    settings: Settings = request.app.state.settings
    if settings.embedded:
        runner = getattr(request.app.state, "runner", None)
        if settings.embedded_runner and (runner is None or not runner.is_alive()):
            return "embedded runner is not running"
        return None
    try:
        from kombu import Connection

        with Connection(settings.broker_url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"
    return None


@router.get("/readyz")
def readyz(request: Request):
    checks = {"database": _check_db(request), "broker": _check_broker(request)}
    if any(checks.values()):
        failed = "; ".join(f"{k}: {v}" for k, v in checks.items() if v)
        return problem_response(problems.problem_dict(
            problems.NOT_READY, failed, instance=request_instance(request),
            checks={k: v or "ok" for k, v in checks.items()}))
    return JSONResponse({"status": "ok", "checks": {k: "ok" for k in checks}})


class JobsCollector:
    """Jobs by status, read from the table at scrape time (it is the record of truth)."""

    def __init__(self, sessionmaker) -> None:
        self.sessionmaker = sessionmaker

    def collect(self):
        gauge = GaugeMetricFamily("hostcp_jobs", "Jobs by status", labels=["status"])
        try:
            with self.sessionmaker() as s:
                counts = repo.count_jobs_by_status(s)
        except Exception:
            counts = {}
        for status, n in sorted(counts.items()):
            gauge.add_metric([status], n)
        yield gauge


def _request_registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # several API worker processes
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    jobs = CollectorRegistry()
    jobs.register(JobsCollector(request.app.state.sessionmaker))
    body = generate_latest(_request_registry()) + generate_latest(jobs)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
