"""Fixtures for the service tests: settings on a temporary SQLite file, the real app with its
spawned runner, API keys, small CSV datasets, and a fresh Postgres database (skipped when the
server is not reachable)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from service_helpers import service_settings, write_csv_pair

from app.core.config import Settings, configure
from app.db import repo
from app.db.session import dispose_engines, session_scope

ADMIN_URL = os.environ.get("HOSTCP_TEST_POSTGRES_URL",
                           "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _admin_engine():
    from sqlalchemy import create_engine

    return create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture
def pg_database():
    name = f"hostcp_test_{uuid.uuid4().hex[:12]}"
    engine = _admin_engine()
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        pytest.skip(f"Postgres not reachable at {ADMIN_URL}: {type(exc).__name__}")
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    dispose_engines()
    with engine.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    engine.dispose()


@pytest.fixture
def settings(tmp_path) -> Settings:
    s = service_settings(tmp_path / "data")
    configure(s)
    yield s
    configure(None)


@pytest.fixture
def client(settings):
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(settings)) as c:
        yield c


def _key(settings: Settings, name: str) -> dict[str, str]:
    with session_scope(settings) as s:
        _, token = repo.create_api_key(s, name=name)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api_key_headers(client, settings) -> dict[str, str]:
    return _key(settings, "alice")


@pytest.fixture
def other_key_headers(client, settings) -> dict[str, str]:
    return _key(settings, "bob")


@pytest.fixture
def csv_pair(tmp_path) -> tuple[Path, Path]:
    return write_csv_pair(tmp_path)
