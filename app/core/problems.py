"""RFC 9457 problem details: stable ``type`` URIs with a constant ``title`` per type.

Used by the API's error handlers and by the worker for a job's ``error`` field, so both speak the
same shape. Nothing here depends on FastAPI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROBLEM_BASE = "https://hostcp.dev/problems/"


@dataclass(frozen=True)
class ProblemType:
    slug: str
    title: str
    status: int

    @property
    def uri(self) -> str:
        return PROBLEM_BASE + self.slug


UNAUTHORIZED = ProblemType("unauthorized", "Missing or invalid API key", 401)
FORBIDDEN = ProblemType("forbidden", "Not allowed", 403)
NOT_FOUND = ProblemType("not-found", "Resource not found", 404)
METHOD_NOT_ALLOWED = ProblemType("method-not-allowed", "Method not allowed", 405)
DATASET_TOO_LARGE = ProblemType("dataset-too-large", "Upload exceeds the size limit", 413)
BODY_TOO_LARGE = ProblemType("body-too-large", "Request body exceeds the size limit", 413)
INVALID_REQUEST = ProblemType("invalid-request", "The request is not valid", 422)
INVALID_DATA = ProblemType("invalid-data", "The data are not usable", 422)
INVALID_PARAMETERS = ProblemType("invalid-parameters", "Unknown method or parameter", 422)
TOO_LARGE_FOR_METHOD = ProblemType("too-large-for-method",
                                   "The training set is larger than the method accepts", 422)
UNKNOWN_DATASET = ProblemType("unknown-dataset", "Referenced dataset not found", 422)
INVALID_PAGE_TOKEN = ProblemType("invalid-page-token", "The page token is not valid", 400)
JOB_NOT_FINISHED = ProblemType("job-not-finished", "The job has no results yet", 409)
JOB_NOT_SUCCEEDED = ProblemType("job-not-succeeded", "The job ended without results", 409)
JOB_FINISHED = ProblemType("job-finished", "The job has already finished", 409)
IDEMPOTENCY_IN_FLIGHT = ProblemType("idempotency-in-flight",
                                    "A request with this Idempotency-Key is in progress", 409)
IDEMPOTENCY_MISMATCH = ProblemType("idempotency-mismatch",
                                   "Idempotency-Key reused with a different request", 422)
NO_SELECTOR = ProblemType("no-online-selector", "The job has no online selector", 409)
NOT_READY = ProblemType("not-ready", "Service not ready", 503)
INTERNAL = ProblemType("internal-error", "Internal server error", 500)
HTTP_ERROR = ProblemType("http-error", "HTTP error", 400)
# Job errors (stored in jobs.error)
JOB_FAILED = ProblemType("job-failed", "The valuation failed", 500)
JOB_CANCELED = ProblemType("job-canceled", "The job was canceled", 409)
JOB_TIMED_OUT = ProblemType("job-timed-out", "The job exceeded its time limit", 504)
MAX_ATTEMPTS = ProblemType("max-attempts", "The job failed on every attempt", 500)


def problem_dict(kind: ProblemType, detail: str | None = None, *, instance: str | None = None,
                 status: int | None = None, **extensions: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": kind.uri, "title": kind.title,
                            "status": status or kind.status}
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    body.update({k: v for k, v in extensions.items() if v is not None})
    return body


class Problem(Exception):
    """Raise anywhere in the API to answer with a problem+json body."""

    def __init__(self, kind: ProblemType, detail: str | None = None, *,
                 headers: dict[str, str] | None = None, **extensions: Any) -> None:
        super().__init__(detail or kind.title)
        self.kind = kind
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions

    @property
    def status(self) -> int:
        return self.kind.status

    def to_dict(self, instance: str | None = None) -> dict[str, Any]:
        return problem_dict(self.kind, self.detail, instance=instance, **self.extensions)
