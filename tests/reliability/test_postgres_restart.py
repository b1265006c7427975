"""A real Postgres server restart (`pg_ctlcluster ... stop` then `start`: every database and
session on the server goes) while the API, a `hostcp serve` process in server mode, serves; one
job runs under a Celery worker and another waits queued behind it.

During the outage /readyz and /v1 requests answer 503 problem+json within seconds (no hang),
also for a key the API has not cached (503, not 401: an unreachable table says nothing about the
key). Once the server is back the same API process recovers without a restart (pooled
connections are tested at checkout), both jobs end succeeded with one set of results each, and
none is lost. The server is started again in a ``finally``, and once more by the fixture,
whatever happens, so that the rest of the suite finds it up. CI runs alone on its machine; on a
shared machine this test briefly takes Postgres away from everyone else too."""

from __future__ import annotations

import time

import pytest
from reliability_helpers import make_key, n_points, slow_job_body, until
from server_helpers import (
    ApiProcess,
    CeleryWorker,
    postgres_up,
    require_pg_ctl,
    restart_postgres,
    server_mode,
    start_postgres,
)
from service_helpers import FAST_METHOD, assert_problem, upload

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]


@pytest.fixture
def postgres_restored():
    require_pg_ctl()
    try:
        yield
    finally:
        start_postgres()  # whatever happened in the test
        assert postgres_up(5), "Postgres is down after the restart test"


def _timed(fn):
    t = time.monotonic()
    out = fn()
    return out, time.monotonic() - t


def test_postgres_server_restart_while_serving(postgres_restored, tmp_path, csv_pair):
    import httpx

    # a lease longer than the outage: the running job's worker keeps it while its heartbeats
    # fail, rather than the reaper handing the job to someone else meanwhile
    with server_mode(tmp_path, lease_s=15.0) as (s, workers):
        api = ApiProcess(s, tmp_path / "api.log").start()
        try:
            h, _ = make_key(s, "ops")
            h_uncached, _ = make_key(s, "never-used-before-the-outage")
            with httpx.Client(base_url=api.url, timeout=60) as c:
                train = upload(c, h, csv_pair[0], id_column="row_id")
                test = upload(c, h, csv_pair[1], id_column="row_id")
                running_id = c.post("/v1/jobs", headers=h,
                                    json=slow_job_body(train, test, 50)).json()["id"]
                queued_id = c.post("/v1/jobs", headers=h, json={
                    "train_dataset_id": train["id"], "test_dataset_id": test["id"],
                    "method": FAST_METHOD, "fraction": 0.3}).json()["id"]
                ids = [running_id, queued_id]
                workers.append(CeleryWorker(s, tmp_path / "w.log").start())  # concurrency 1
                until(lambda: (j := c.get(f"/v1/jobs/{running_id}", headers=h).json())
                      ["status"] == "running" and j["progress"] > 0.03, 120, "the job to run")
                assert c.get(f"/v1/jobs/{queued_id}", headers=h).json()["status"] == "queued"

                outage: dict[str, float] = {}

                def while_down():
                    r, outage["readyz_s"] = _timed(lambda: c.get("/readyz"))
                    body = assert_problem(r, 503, "not-ready")
                    assert body["checks"]["database"] != "ok", body
                    assert body["checks"]["broker"] == "ok", body
                    r, outage["status_s"] = _timed(
                        lambda: c.get(f"/v1/jobs/{running_id}", headers=h))
                    assert_problem(r, 503, "not-ready")
                    assert r.headers.get("retry-after"), r.headers
                    r, outage["uncached_key_s"] = _timed(
                        lambda: c.get("/v1/jobs", headers=h_uncached))
                    assert_problem(r, 503, "not-ready")

                restart_postgres(down_s=3.0, during=while_down)
                assert max(outage.values()) < 10, outage  # answered, not hung
                assert api.proc.poll() is None, api.log()[-3000:]

                # the same API process recovers
                until(lambda: c.get("/readyz").status_code == 200, 30, "readiness after the "
                      "restart", every=0.3)
                assert c.get(f"/v1/jobs/{running_id}", headers=h).status_code == 200
                assert c.get("/v1/jobs", headers=h_uncached).status_code == 200

                def finished():
                    jobs = [c.get(f"/v1/jobs/{i}", headers=h).json() for i in ids]
                    return jobs if all(j["status"] not in ("queued", "running")
                                       for j in jobs) else None

                jobs = until(finished, 150, "both jobs to finish", every=0.5)
                assert [j["status"] for j in jobs] == ["succeeded"] * 2, (
                    jobs, workers[0].log()[-3000:])
                for j in jobs:
                    assert n_points(s, j["id"]) == train["n_rows"]  # one set of results each
                assert api.proc.poll() is None  # never restarted
                # the outage met the running job: its worker could not write for a while
                log = workers[0].log()
                assert any(line in log for line in (
                    f"heartbeat for job {running_id} failed",
                    f"job {running_id}: lost the database connection",
                    f"job {running_id}: database unavailable while saving")), log[-3000:]
                print(f"\npostgres restart: 2 jobs, 0 lost, attempts "
                      f"{[j['attempts'] for j in jobs]}; during the outage readyz "
                      f"{outage['readyz_s']:.2f} s, status {outage['status_s']:.2f} s, "
                      f"uncached key {outage['uncached_key_s']:.2f} s (all 503)")
        finally:
            api.stop()
