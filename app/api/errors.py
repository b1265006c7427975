"""Every error leaves as RFC 9457 application/problem+json, never with a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core import problems
from app.core.problems import Problem, ProblemType

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"

_BY_STATUS = {401: problems.UNAUTHORIZED, 403: problems.FORBIDDEN, 404: problems.NOT_FOUND,
              405: problems.METHOD_NOT_ALLOWED, 413: problems.BODY_TOO_LARGE,
              422: problems.INVALID_REQUEST, 500: problems.INTERNAL, 503: problems.NOT_READY}


def request_instance(request: Request) -> str | None:
    rid = getattr(request.state, "request_id", None)
    return f"urn:request:{rid}" if rid else None


def problem_response(body: dict, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(jsonable_encoder(body), status_code=body["status"], headers=headers,
                        media_type=PROBLEM_JSON)


def _kind_for_status(status: int) -> ProblemType:
    return _BY_STATUS.get(status, problems.HTTP_ERROR)


async def _problem(request: Request, exc: Problem) -> JSONResponse:
    return problem_response(exc.to_dict(request_instance(request)), exc.headers)


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = _kind_for_status(exc.status_code)
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != kind.title else None
    body = problems.problem_dict(kind, detail, instance=request_instance(request),
                                 status=exc.status_code)
    return problem_response(body, getattr(exc, "headers", None))


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"pointer": "/" + "/".join(str(p) for p in e.get("loc", ())),
               "detail": e.get("msg", "")} for e in exc.errors()]
    detail = "; ".join(f"{e['pointer']}: {e['detail']}" for e in errors[:5])
    body = problems.problem_dict(problems.INVALID_REQUEST, detail,
                                 instance=request_instance(request), errors=errors)
    return problem_response(body)


async def _database_down(request: Request, exc: OperationalError) -> JSONResponse:
    # the database is unreachable (restart, failover, refused connections): a retryable 503,
    # as /readyz reports it, rather than an internal error
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path,
                type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__)
    body = problems.problem_dict(problems.NOT_READY, "the database is unavailable; retry shortly",
                                 instance=request_instance(request))
    return problem_response(body, {"Retry-After": "5"})


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    body = problems.problem_dict(problems.INTERNAL, "an unexpected error occurred; it has been "
                                 "logged", instance=request_instance(request))
    return problem_response(body)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _problem)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(Exception, _unhandled)
