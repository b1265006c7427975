"""SIGKILL the embedded runner mid-job: a new runner (its own reaper) finishes the job once the
lease expires, the results are stored once, ``attempts`` counts both deliveries, and a job that
has used its attempts fails with ``max-attempts`` instead of looping."""

from __future__ import annotations

import pytest
from reliability_helpers import job_row, make_key, n_points, sigkill, slow_job_body, until
from service_helpers import assert_problem, service_settings, upload

from app.core.config import configure
from worker.runner import InProcessRunner

pytestmark = pytest.mark.timeout(150)


def _running_with_progress(client, h, job_id):
    job = client.get(f"/v1/jobs/{job_id}", headers=h).json()
    return job if job["status"] == "running" and job["progress"] > 0.03 else None


@pytest.mark.parametrize("max_attempts", [3, 1])
def test_sigkill_runner_mid_job(tmp_path, csv_pair, max_attempts):
    from fastapi.testclient import TestClient

    from app.main import create_app

    # a short lease so that the dead runner's job goes stale quickly
    s = service_settings(tmp_path / "data", lease_s=2.0, max_attempts=max_attempts)
    configure(s)
    replacement = None
    try:
        with TestClient(create_app(s)) as client:
            h, _ = make_key(s, "crash")
            train = upload(client, h, csv_pair[0], id_column="row_id")
            test = upload(client, h, csv_pair[1], id_column="row_id")
            job_id = client.post("/v1/jobs", headers=h,
                                 json=slow_job_body(train, test, 25)).json()["id"]
            until(lambda: _running_with_progress(client, h, job_id), 60, "the job to run")
            runner = client.app.state.runner
            sigkill(runner._proc.pid)  # no clean-up, no release: as if the machine died
            runner._proc.join(10)
            assert not runner.is_alive()
            ready = client.get("/readyz")
            assert_problem(ready, 503, "not-ready")
            assert job_row(s, job_id).status == "running"  # the row still says running
            assert n_points(s, job_id) == 0

            replacement = InProcessRunner(s).start()
            job = until(lambda: (j := client.get(f"/v1/jobs/{job_id}", headers=h).json())
                        ["status"] not in ("queued", "running") and j, 90, "the job to end")
            if max_attempts == 1:
                assert job["status"] == "failed", job
                assert job["error"]["type"].endswith("/max-attempts"), job
                assert job["attempts"] == 1 and n_points(s, job_id) == 0
            else:
                assert job["status"] == "succeeded", job
                assert job["attempts"] == 2  # the killed delivery and the one that finished
                # exactly one set of results
                assert n_points(s, job_id) == train["n_rows"]
                values = client.get(f"/v1/jobs/{job_id}/values?page_size=1000",
                                    headers=h).json()["items"]
                assert sorted(v["index"] for v in values) == list(range(train["n_rows"]))
            client.app.state.runner = replacement  # shut down by the lifespan; keeps readyz
            assert client.get("/readyz").status_code == 200
    finally:
        if replacement is not None:
            replacement.stop()
        configure(None)
