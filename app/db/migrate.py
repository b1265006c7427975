"""Run Alembic from code and check that a database is at the code's schema revision."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from app.core.config import Settings, get_settings
from app.db.session import get_engine

ROOT = Path(__file__).resolve().parents[2]


class SchemaMismatch(RuntimeError):
    """The database is not at the schema revision this code expects."""


def alembic_config(settings: Settings | None = None) -> Config:
    settings = settings or get_settings()
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", settings.db_url.replace("%", "%%"))
    cfg.attributes["configure_logging"] = False
    return cfg


def upgrade(settings: Settings | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(settings), revision)


def head_revision(settings: Settings | None = None) -> str | None:
    return ScriptDirectory.from_config(alembic_config(settings)).get_current_head()


def current_revision(settings: Settings | None = None) -> str | None:
    with get_engine(settings).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def ensure_schema(settings: Settings | None = None) -> None:
    """Migrate when allowed (the embedded SQLite default), else refuse a stale schema."""
    settings = settings or get_settings()
    if settings.should_auto_migrate:
        upgrade(settings)
        return
    current, head = current_revision(settings), head_revision(settings)
    if current != head:
        raise SchemaMismatch(f"database schema is at {current!r}, the code needs {head!r}; "
                             "run `hostcp migrate` (alembic upgrade head)")
