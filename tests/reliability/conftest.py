"""Fixtures for the reliability tests: they reuse the service tests' helpers (settings on a
temporary SQLite file, small CSV datasets) and add a started app, two API keys, and processes
that can be killed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# the service tests' helpers live next door; a plain path entry, since tests/ is not a package
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from service_helpers import service_settings, write_csv_pair  # noqa: E402

from app.core.config import Settings, configure  # noqa: E402
from app.db.session import dispose_engines  # noqa: E402


def pytest_collection_modifyitems(items) -> None:
    here = Path(__file__).parent
    for item in items:  # every test here is a reliability test
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture
def settings(tmp_path) -> Settings:
    s = service_settings(tmp_path / "data")
    configure(s)
    yield s
    configure(None)
    dispose_engines()


@pytest.fixture
def csv_pair(tmp_path) -> tuple[Path, Path]:
    return write_csv_pair(tmp_path)
