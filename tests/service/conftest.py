"""Fixtures for the service tests: settings on a temporary SQLite file, the real app with its
spawned runner, API keys, and small CSV datasets."""

from __future__ import annotations

from pathlib import Path

import pytest
from service_helpers import service_settings, write_csv_pair

from app.core.config import Settings, configure
from app.db import repo
from app.db.session import session_scope


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
