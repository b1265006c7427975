"""Server mode under faults (Postgres + Redis + real Celery workers started here): a Redis
restart while jobs are queued (its messages are lost: nothing is kept on disk), a Celery worker
SIGKILLed mid-job, and a database outage while the API serves. /readyz reports each outage as
503 problem+json without hanging, and every job still finishes, once."""

from __future__ import annotations

import time

import pytest
from reliability_helpers import job_row, make_key, n_points, slow_job_body, until
from server_helpers import (
    ADMIN_URL,
    CeleryWorker,
    create_database,
    drop_database,
    restart_redis,
    server_mode,
)
from service_helpers import FAST_METHOD, assert_problem, service_settings, upload
from sqlalchemy import create_engine, text

from app.core.config import configure
from app.db.migrate import upgrade
from app.db.session import dispose_engines

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]


@pytest.fixture
def server(tmp_path):
    with server_mode(tmp_path) as (s, workers):
        yield s, workers


def _timed(fn):
    t = time.monotonic()
    out = fn()
    return out, time.monotonic() - t


def _terminal(client, h, ids):
    jobs = [client.get(f"/v1/jobs/{i}", headers=h).json() for i in ids]
    return jobs if all(j["status"] not in ("queued", "running") for j in jobs) else None


def test_redis_restart_and_worker_sigkill_lose_no_job(server, tmp_path, csv_pair):
    from fastapi.testclient import TestClient

    from app.main import create_app

    s, workers = server
    with TestClient(create_app(s)) as client:
        h, _ = make_key(s, "ops")
        assert client.get("/readyz").status_code == 200
        train = upload(client, h, csv_pair[0], id_column="row_id")
        test = upload(client, h, csv_pair[1], id_column="row_id")
        fast = {"train_dataset_id": train["id"], "test_dataset_id": test["id"],
                "method": FAST_METHOD, "fraction": 0.3}
        # queued with no worker running: the messages sit in Redis
        ids = [client.post("/v1/jobs", headers=h, json=slow_job_body(train, test, 25)).json()
               ["id"]]
        ids += [client.post("/v1/jobs", headers=h, json=fast).json()["id"] for _ in range(2)]

        outage = {}

        def while_down():
            r, outage["readyz_s"] = _timed(lambda: client.get("/readyz"))
            body = assert_problem(r, 503, "not-ready")
            assert body["checks"]["broker"] != "ok" and body["checks"]["database"] == "ok"
            # a submit during the outage is accepted (the row is the record); the reaper
            # enqueues it once the broker is back
            r, outage["submit_s"] = _timed(lambda: client.post("/v1/jobs", headers=h, json=fast))
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
            # reads never needed the broker
            assert client.get(f"/v1/jobs/{ids[0]}", headers=h).json()["status"] == "queued"

        restart_redis(down_s=0.5, during=while_down)
        assert outage["readyz_s"] < 10 and outage["submit_s"] < 15, outage  # no hang
        until(lambda: client.get("/readyz").status_code == 200, 20, "readiness after Redis")

        workers.append(CeleryWorker(s, tmp_path / "w1.log").start())
        # the slow job runs: kill its worker mid-valuation
        until(lambda: (j := client.get(f"/v1/jobs/{ids[0]}", headers=h).json())["status"]
              == "running" and j["progress"] > 0.03, 120, "the slow job to run")
        workers[0].kill()
        assert job_row(s, ids[0]).status == "running"  # until its lease expires
        workers.append(CeleryWorker(s, tmp_path / "w2.log").start())

        jobs = until(lambda: _terminal(client, h, ids), 150, "every job to finish", every=0.5)
        logs = workers[0].log()[-2000:] + workers[1].log()[-2000:]
        assert [j["status"] for j in jobs] == ["succeeded"] * len(ids), (jobs, logs)
        assert jobs[0]["attempts"] == 2, jobs[0]  # the killed delivery and the finishing one
        for j in jobs:
            assert n_points(s, j["id"]) == train["n_rows"]  # one set of results each
        print(f"\nserver faults: redis restart, worker SIGKILL; {len(ids)} jobs, 0 lost; "
              f"readyz while down {outage['readyz_s']:.2f} s, submit {outage['submit_s']:.2f} s")


def test_database_outage_is_reported_and_survived(server):
    """The API's own database refuses connections (its sessions are terminated and new ones
    refused, as during a Postgres restart, without disturbing other databases on the server)."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    s, _ = server
    name = s.database_url.rsplit("/", 1)[1]
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with TestClient(create_app(s), raise_server_exceptions=False) as client:
        h, _ = make_key(s, "ops")
        assert client.get("/v1/jobs", headers=h).status_code == 200
        try:
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
                conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE datname = :d"), {"d": name})
            r, took = _timed(lambda: client.get("/readyz"))
            body = assert_problem(r, 503, "not-ready")
            assert body["checks"]["database"] != "ok" and took < 10, (body, took)
            r, took = _timed(lambda: client.get("/v1/jobs", headers=h))
            assert r.status_code == 503 and took < 10, (r.status_code, r.text, took)
            assert_problem(r, 503, "not-ready")
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            admin.dispose()
        until(lambda: client.get("/readyz").status_code == 200, 20, "readiness after the DB")
        assert client.get("/v1/jobs", headers=h).status_code == 200


@pytest.fixture
def pg_embedded(tmp_path):
    """Postgres with the embedded runner (no broker)."""
    url = create_database()
    s = service_settings(tmp_path / "data", database_url=url, lease_s=3.0)
    upgrade(s)
    configure(s)
    try:
        yield s
    finally:
        configure(None)
        dispose_engines()
        drop_database(url)


def test_database_outage_while_a_job_runs(pg_embedded, csv_pair):
    """The database goes away mid-job for longer than the job has left to run, so the job's
    final write meets the outage; once it is back, the job still ends succeeded, once, and the
    runner is still up."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    s = pg_embedded
    name = s.database_url.rsplit("/", 1)[1]
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with TestClient(create_app(s), raise_server_exceptions=False) as client:
        h, _ = make_key(s, "ops")
        train = upload(client, h, csv_pair[0], id_column="row_id")
        test = upload(client, h, csv_pair[1], id_column="row_id")
        job_id = client.post("/v1/jobs", headers=h,
                             json=slow_job_body(train, test, 10)).json()["id"]
        until(lambda: client.get(f"/v1/jobs/{job_id}", headers=h).json()["progress"] > 0.03,
              60, "the job to run")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
                conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE datname = :d"), {"d": name})
            time.sleep(12)  # the job (about 1.5 s of valuation, a few s of curves) ends meanwhile
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            admin.dispose()
        job = until(lambda: (j := client.get(f"/v1/jobs/{job_id}", headers=h).json())
                    ["status"] not in ("queued", "running") and j, 90, "the job to end",
                    every=0.3)
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 1  # the results waited for the database; nothing was redone
        assert n_points(s, job_id) == train["n_rows"]
        assert client.app.state.runner.is_alive()
        assert client.get("/readyz").status_code == 200
