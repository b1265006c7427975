"""Alembic environment: metadata and URL come from the app (``app.db.models``, Settings)."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from app.core.config import get_settings
from app.db.models import Base
from app.db.session import make_engine
from app.db.types import UTCDateTime

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or get_settings().db_url


def _render_item(type_, obj, autogen_context):
    # Migrations use plain SQLAlchemy types, not the app's decorators (they must not change).
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**kw) -> None:
    # render_as_batch: SQLite cannot ALTER most things; batch mode moves and copies tables.
    context.configure(target_metadata=target_metadata, compare_type=True, render_as_batch=True,
                      render_item=_render_item, **kw)


def run_migrations_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as conn:
            sqlite = conn.dialect.name == "sqlite"
            if sqlite:
                # A batch migration rebuilds a table (copy, DROP, rename); with foreign keys on,
                # SQLite's DROP TABLE of the old jobs would cascade-delete job_points, job_curves
                # and job_method_points. The pragma only takes effect outside a transaction.
                conn.exec_driver_sql("PRAGMA foreign_keys = OFF")
                conn.commit()
            _configure(connection=conn)
            with context.begin_transaction():
                context.run_migrations()
                if sqlite:  # what the rebuilt tables hold must still hang together
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise RuntimeError(f"migration left rows with broken foreign keys: "
                                           f"{broken[:5]}")
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
