"""The per-process API-key cache (app/api/auth.py): a status poll by a known key costs one query
(its job), the token is still compared on every request, and a revoked key stops working once
its cache entry expires (at once with HOSTCP_AUTH_CACHE_S=0)."""

from __future__ import annotations

import time

import pytest
from reliability_helpers import make_key
from service_helpers import assert_problem, service_settings
from sqlalchemy import event, update

from app.core.config import configure
from app.db.models import ApiKey
from app.db.session import dispose_engines, get_engine, session_scope
from app.db.types import utcnow

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def app_client(tmp_path, request):
    from fastapi.testclient import TestClient

    from app.main import create_app

    s = service_settings(tmp_path / "data", embedded_runner=False, auth_cache_s=request.param)
    configure(s)
    try:
        with TestClient(create_app(s)) as c:
            yield c, s
    finally:
        configure(None)
        dispose_engines()


def _statements(settings):
    seen: list[str] = []

    def record(_conn, _cursor, statement, *_args):
        seen.append(statement.split()[0].upper())

    event.listen(get_engine(settings), "before_cursor_execute", record)
    return seen


def _revoke(settings, name: str) -> None:
    with session_scope(settings) as s:
        s.execute(update(ApiKey).where(ApiKey.name == name).values(revoked_at=utcnow()))


@pytest.mark.parametrize("app_client", [2.0], indirect=True)
def test_cached_key_costs_no_query_and_expires(app_client):
    client, s = app_client
    h, token = make_key(s, "poller")
    seen = _statements(s)
    assert client.get("/v1/jobs", headers=h).status_code == 200
    first = len(seen)
    assert client.get("/v1/jobs", headers=h).status_code == 200
    # the key lookup is cached: the second list runs one query fewer than the first
    assert len(seen) - first == first - 1, seen
    wrong = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert_problem(client.get("/v1/jobs", headers={"Authorization": f"Bearer {wrong}"}), 401,
                   "unauthorized")  # a cached prefix does not skip the comparison
    _revoke(s, "poller")
    time.sleep(2.2)  # the entry expires; the lookup sees the revocation
    assert_problem(client.get("/v1/jobs", headers=h), 401, "unauthorized")


@pytest.mark.parametrize("app_client", [0.0], indirect=True)
def test_no_cache_revocation_is_immediate(app_client):
    client, s = app_client
    h, _ = make_key(s, "short")
    assert client.get("/v1/jobs", headers=h).status_code == 200
    _revoke(s, "short")
    assert_problem(client.get("/v1/jobs", headers=h), 401, "unauthorized")
