"""Database layer: SQLAlchemy 2 models, engines and sessions. No FastAPI imports here."""

from app.db.models import (
           ApiKey,
           Base,
           CurvePoint,
           DatasetRecord,
           IdempotencyRecord,
           Job,
           PointResult,
)
from app.db.session import get_engine, session_scope

__all__ = ["ApiKey", "Base", "CurvePoint", "DatasetRecord", "IdempotencyRecord", "Job",
           "PointResult", "get_engine", "session_scope"]
