"""The FastAPI application: ``create_app(settings)``; ``uvicorn --factory app.main:create_app``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from app.api.errors import install_error_handlers
from app.api.middleware import RequestContextMiddleware
from app.api.routes import (
    dashboard,
    datasets,
    health,
    jobs,
    methods,
    plots,
    results,
    selectors,
)
from app.core.config import Settings, get_settings
from app.db.migrate import ensure_schema
from app.db.session import session_factory
from app.jobs import dispatch
from worker.runner import InProcessRunner, RunnerWakeup

log = logging.getLogger("hostcp.api")


async def _reaper(settings: Settings) -> None:
    """Server mode: periodically re-enqueue queued jobs whose message may be lost and jobs whose
    worker died (expired lease)."""
    while True:
        try:
            await run_in_threadpool(dispatch.requeue_lost, settings)
        except Exception:
            log.warning("reaper pass failed", exc_info=True)
        await asyncio.sleep(settings.reaper_interval_s)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    await run_in_threadpool(ensure_schema, settings)
    settings.storage_root.mkdir(parents=True, exist_ok=True)
    if settings.auth == "disabled":
        log.warning("HOSTCP_AUTH=disabled: every request acts as one local user")
    runner, reaper = None, None
    # this is the API process's composition root: it installs the transport the API hands
    # jobs to (the only place the API side meets worker/)
    if settings.embedded:
        if settings.embedded_runner:
            runner = InProcessRunner(settings).start()
            app.state.runner = runner
        dispatch.install(RunnerWakeup(runner.notify if runner is not None else None))
    else:
        # importing it builds the Celery app: server mode only
        from worker.celery_app import CeleryTransport

        dispatch.install(CeleryTransport(settings))
        reaper = asyncio.create_task(_reaper(settings))
    try:
        yield
    finally:
        if reaper is not None:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
        dispatch.install(None)
        if runner is not None:
            await run_in_threadpool(runner.stop)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="hostcp",
        version="0.1.0",
        summary="Data valuation: high-value subsets (HOST-CP), values and mislabels for your "
                "test set",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.sessionmaker = session_factory(settings)
    app.state.runner = None
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, upload_limit=settings.max_upload_bytes,
                       json_limit=settings.max_json_bytes)
    for module in (datasets, jobs, methods, results, plots, selectors, health, dashboard):
        app.include_router(module.router)
    return app
