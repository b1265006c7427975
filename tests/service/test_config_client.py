"""Settings validation, auth-disabled embedded mode, and the Python client against the app."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from service_helpers import FAST_METHOD, service_settings

from app.client import ApiError, HostcpClient
from app.core.config import Settings

pytestmark = pytest.mark.timeout(180)


def test_settings_defaults_and_validation(tmp_path):
    s = Settings(data_dir=tmp_path, database_url=None, broker_url=None)
    assert s.embedded and s.is_sqlite and s.should_auto_migrate
    assert s.db_url == f"sqlite:///{(tmp_path / 'hostcp.db').resolve()}"
    pg = Settings(data_dir=tmp_path, database_url="postgres://u@h/db", broker_url="redis://r")
    assert pg.db_url == "postgresql+psycopg://u@h/db" and not pg.embedded
    assert not pg.should_auto_migrate  # server mode: the migrate step owns the schema
    assert pg.visibility_timeout_s > pg.time_limit_s > pg.soft_time_limit_s
    assert pg.queue_for("cuda") == "gpu" and pg.queue_for(None) == "cpu"
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        Settings(data_dir=tmp_path, env="prod")
    with pytest.raises(ValidationError, match="AUTH=disabled"):
        Settings(data_dir=tmp_path, auth="disabled", broker_url="redis://r")


def test_settings_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HOSTCP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HOSTCP_MAX_UPLOAD_BYTES", "1234")
    monkeypatch.setenv("HOSTCP_CURVE_FRACTIONS", "[0.5, 1.0]")
    monkeypatch.setenv("HOSTCP_BROKER_URL", "")  # blank means unset
    s = Settings()
    assert s.max_upload_bytes == 1234 and s.curve_fractions == (0.5, 1.0) and s.embedded


def test_auth_disabled_embedded(tmp_path):
    from fastapi.testclient import TestClient

    from app.main import create_app

    s = service_settings(tmp_path / "data", auth="disabled", embedded_runner=False)
    with TestClient(create_app(s)) as client:
        r = client.get("/v1/jobs")
        assert r.status_code == 200 and r.json()["items"] == []
        assert client.get("/readyz").status_code == 200
        # a database behind the code's schema: alive, but not ready
        from sqlalchemy import text

        from app.db.session import session_scope

        with session_scope(s) as sess:
            sess.execute(text("UPDATE alembic_version SET version_num = 'old'"))
        assert client.get("/healthz").status_code == 200
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["type"].endswith("/not-ready")
        assert "schema" in r.json()["checks"]["database"]


def test_client_upload_submit_wait_results(client, api_key_headers, csv_pair):
    token = api_key_headers["Authorization"].split()[1]
    with HostcpClient("http://testserver", api_key=token, transport=client._transport) as c:
        assert FAST_METHOD in c.methods()
        train = c.upload_dataset(csv_pair[0], id_column="row_id")
        test = c.upload_dataset(csv_pair[1], id_column="row_id")
        assert [d["id"] for d in c.list_datasets()] == [test["id"], train["id"]]
        job = c.submit_job(train["id"], test["id"], method=FAST_METHOD, fraction=0.1,
                           idempotency_key="0b8a7e0c-3a57-4c41-9a56-0b8b0f6d5f3e")
        again = c.submit_job(train["id"], test["id"], method=FAST_METHOD, fraction=0.1,
                             idempotency_key="0b8a7e0c-3a57-4c41-9a56-0b8b0f6d5f3e")
        assert again["id"] == job["id"]  # a retried submit does not start a second job
        done = c.wait(job["id"], timeout=120, poll_s=0.2)
        assert done["status"] == "succeeded"
        subset = c.results(job["id"], "subset")
        assert len(subset) == 8 and list(subset.columns) == ["index", "id", "score", "rank",
                                                             "label"]
        assert [j["id"] for j in c.list_jobs(status="succeeded")] == [job["id"]]
        with pytest.raises(ApiError) as err:
            c.get_job("no-such-job")
        assert err.value.status == 404 and err.value.problem["type"].endswith("/not-found")


def test_client_submits_a_comparison(client, api_key_headers, csv_pair):
    token = api_key_headers["Authorization"].split()[1]
    with HostcpClient("http://testserver", api_key=token, transport=client._transport) as c:
        train = c.upload_dataset(csv_pair[0], id_column="row_id")
        test = c.upload_dataset(csv_pair[1], id_column="row_id")
        job = c.submit_job(train["id"], test["id"], methods=["knn_shapley", "random"],
                           inject_flips=0.1, fraction=0.1)
        assert job["method"] == "compare" and job["methods"] == ["knn_shapley", "random"]
        assert job["inject_flips"] == 0.1
        with pytest.raises(ApiError) as err:  # one method is no comparison
            c.submit_job(train["id"], test["id"], methods=["random"])
        assert err.value.status == 422
