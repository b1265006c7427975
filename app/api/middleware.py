"""ASGI middleware: request ids, the body-size cap (enforced while the body arrives, before any
parsing), and Prometheus request metrics."""

from __future__ import annotations

import json
import time
import uuid

from prometheus_client import Counter, Histogram

from app.core import problems

REQUESTS = Counter("hostcp_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("hostcp_http_request_seconds", "HTTP request latency", ["method", "route"])


class BodyTooLarge(Exception):
    pass


class RequestContextMiddleware:
    """Request id (echoed as X-Request-ID), body cap, metrics: one pass over the ASGI call."""

    def __init__(self, app, *, upload_limit: int, json_limit: int,
                 upload_paths: tuple[str, ...] = ("/v1/datasets",)) -> None:
        self.app = app
        self.upload_limit = upload_limit
        self.json_limit = json_limit
        self.upload_paths = upload_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _header(scope, b"x-request-id") or uuid.uuid4().hex
        rid = rid[:64]
        scope.setdefault("state", {})["request_id"] = rid
        is_upload = scope["method"] == "POST" and scope["path"] in self.upload_paths
        # multipart framing adds a little to the file itself
        limit = self.upload_limit + 64 * 1024 if is_upload else self.json_limit
        kind = problems.DATASET_TOO_LARGE if is_upload else problems.BODY_TOO_LARGE
        detail = (f"uploads are limited to {self.upload_limit} bytes" if is_upload
                  else f"request bodies are limited to {self.json_limit} bytes")
        start = time.perf_counter()
        status_holder = {"status": 500}

        async def send_wrapped(message):
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            declared = _header(scope, b"content-length")
            if declared and declared.isdigit() and int(declared) > limit:
                await _send_problem(send_wrapped, kind, detail, rid)
                return
            received = 0
            exceeded = False

            async def receive_limited():
                nonlocal received, exceeded
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        exceeded = True
                        raise BodyTooLarge
                return message

            async def send_guarded(message):
                if not exceeded:  # once over the cap, the app's own reply is dropped for ours
                    await send_wrapped(message)

            try:
                await self.app(scope, receive_limited, send_guarded)
            except Exception:
                if not exceeded:
                    raise
            if exceeded:
                await _send_problem(send_wrapped, kind, detail, rid)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            REQUESTS.labels(scope["method"], path, str(status_holder["status"])).inc()
            LATENCY.labels(scope["method"], path).observe(time.perf_counter() - start)


def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k == name:
            return v.decode("latin-1")
    return None


async def _send_problem(send, kind, detail, rid) -> None:
    body = json.dumps(problems.problem_dict(kind, detail, instance=f"urn:request:{rid}")).encode()
    await send({"type": "http.response.start", "status": kind.status,
                "headers": [(b"content-type", b"application/problem+json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
