"""``Idempotency-Key`` for creating POSTs: a retry replays the stored response; the same key
with a different request is a 422; a retry while the first is still running is a 409."""

from __future__ import annotations

import uuid
from datetime import timedelta

from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.core import problems
from app.core.problems import Problem
from app.db.models import IdempotencyRecord
from app.db.types import utcnow


def check_key(key: str | None) -> str | None:
    if key is None:
        return None
    try:
        return str(uuid.UUID(key))
    except ValueError:
        raise Problem(problems.INVALID_REQUEST, "Idempotency-Key must be a UUID") from None


class Idempotency:
    """Begin (replay or reserve), then ``complete`` or ``abandon``. Uses its own sessions so the
    reservation is visible to concurrent retries before the work commits."""

    def __init__(self, factory: sessionmaker[Session], *, owner_id: int, key: str | None,
                 ttl_s: int) -> None:
        self.factory, self.owner_id, self.key, self.ttl_s = factory, owner_id, key, ttl_s

    def begin(self, fingerprint: str) -> JSONResponse | None:
        """The stored response to replay, or None after reserving the key."""
        if self.key is None:
            return None
        with self.factory() as s, s.begin():
            s.execute(delete(IdempotencyRecord).where(
                IdempotencyRecord.created_at < utcnow() - timedelta(seconds=self.ttl_s)))
            rec = s.scalar(select(IdempotencyRecord).where(
                IdempotencyRecord.owner_id == self.owner_id, IdempotencyRecord.key == self.key))
            if rec is not None:
                if rec.fingerprint != fingerprint:
                    raise Problem(problems.IDEMPOTENCY_MISMATCH,
                                  "this Idempotency-Key was used for a different request")
                if rec.status_code is None:
                    raise Problem(problems.IDEMPOTENCY_IN_FLIGHT, "retry later",
                                  headers={"Retry-After": "1"})
                return JSONResponse(rec.response, status_code=rec.status_code,
                                    headers={**(rec.headers or {}), "Idempotent-Replayed": "true"})
        try:
            with self.factory() as s, s.begin():
                s.add(IdempotencyRecord(owner_id=self.owner_id, key=self.key,
                                        fingerprint=fingerprint))
        except IntegrityError:
            raise Problem(problems.IDEMPOTENCY_IN_FLIGHT, "retry later",
                          headers={"Retry-After": "1"}) from None
        return None

    def complete(self, status_code: int, body, headers: dict[str, str]) -> None:
        if self.key is None:
            return
        with self.factory() as s, s.begin():
            rec = s.get(IdempotencyRecord, (self.owner_id, self.key))
            if rec is not None:
                rec.status_code, rec.response = status_code, jsonable_encoder(body)
                rec.headers = headers

    def abandon(self) -> None:
        if self.key is None:
            return
        with self.factory() as s, s.begin():
            s.execute(delete(IdempotencyRecord).where(
                IdempotencyRecord.owner_id == self.owner_id, IdempotencyRecord.key == self.key,
                IdempotencyRecord.status_code.is_(None)))
