"""Engines and sessions: one engine per URL and process; one transactional scope per unit of
work (``session_scope``); the API's per-request session lives in ``app/api/deps.py``."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings, get_settings

_engines: dict[tuple[str, int], Engine] = {}
_lock = threading.Lock()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")  # the API and the runner process write concurrently
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(url: str) -> Engine:
    # Pool sizes: under load the API holds one connection per request in flight (up to the
    # thread pool's 40). Connections beyond pool_size are opened and closed per checkout, which
    # costs most exactly when the server is busiest (a Postgres backend per connection), so the
    # persistent pool covers the usual concurrency (the load test's 16 clients); pool_timeout
    # bounds the wait for a connection instead of letting a request hang.
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_size=20, max_overflow=20, pool_timeout=10)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # pool_pre_ping: after a database restart the pooled connections are dead; each is tested
    # (and replaced) at checkout, so no request fails once the server is back.
    # connect_timeout: an unreachable server fails a request with 503 in seconds, not a hang.
    return create_engine(url, pool_pre_ping=True, pool_size=16, max_overflow=16,
                         pool_timeout=10, connect_args={"connect_timeout": 5})


def get_engine(settings: Settings | None = None) -> Engine:
    """The engine for the settings' URL, created once per process (a forked child gets its
    own: connections must never cross a fork)."""
    url = (settings or get_settings()).db_url
    key = (url, os.getpid())
    with _lock:
        if key not in _engines:
            _engines[key] = make_engine(url)
        return _engines[key]


def dispose_engines() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose(close=False)
        _engines.clear()


def session_factory(settings: Settings | None = None) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(settings), expire_on_commit=False)


@contextmanager
def transaction(session: Session) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error, always close."""
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    """A new session as one unit of work (see :func:`transaction`)."""
    with transaction(session_factory(settings)()) as session:
        yield session
