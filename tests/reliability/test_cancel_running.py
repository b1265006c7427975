"""Cancel a running job: it stops within one permutation (TMC-Shapley) or one minibatch
(HOST-CP), i.e. at its next progress event, ends ``canceled`` with a job-canceled problem, and
nothing partial is presented as a result."""

from __future__ import annotations

import time

import pytest
from reliability_helpers import job_row, make_key, n_points, slow_job_body, until
from service_helpers import assert_problem, service_settings, upload

from app.core.config import configure

pytestmark = pytest.mark.timeout(120)
PERMUTATIONS = 60  # about 9 s if it were not canceled
# HOST-CP: 5 minibatches per epoch on the valuation part; about 13 s if it were not canceled
HOSTCP = {"method": "hostcp", "params": {"epochs": 150, "batch_size": 16, "device": "cpu"}}


@pytest.mark.parametrize("method", ["tmc_shapley", "hostcp"])
def test_cancel_stops_a_running_job_within_a_chunk(tmp_path, csv_pair, method):
    from fastapi.testclient import TestClient

    from app.main import create_app

    s = service_settings(tmp_path / "data", progress_interval_s=0.1)
    configure(s)
    try:
        with TestClient(create_app(s)) as client:
            h, _ = make_key(s, "c")
            train = upload(client, h, csv_pair[0], id_column="row_id")
            test = upload(client, h, csv_pair[1], id_column="row_id")
            body = slow_job_body(train, test, PERMUTATIONS)
            if method == "hostcp":
                body.update(HOSTCP)
            job_id = client.post("/v1/jobs", headers=h, json=body).json()["id"]
            # wait until a few permutations are done
            until(lambda: client.get(f"/v1/jobs/{job_id}", headers=h).json()["progress"] > 0.06,
                  60, "the job to make progress")
            r = client.post(f"/v1/jobs/{job_id}/cancel", headers=h)
            t_cancel = time.monotonic()
            assert r.status_code == 202 and r.json()["cancel_requested"] is True
            at_cancel = r.json()["progress"]
            job = until(lambda: (j := client.get(f"/v1/jobs/{job_id}", headers=h).json())
                        ["status"] != "running" and j, 30, "the job to stop", every=0.05)
            stopped_after = time.monotonic() - t_cancel
            print(f"\ncancel ({method}): stopped {stopped_after:.2f} s after the request, "
                  f"progress {at_cancel:.3f} -> {job['progress']:.3f}")
            assert job["status"] == "canceled", job
            assert job["error"]["type"].endswith("/job-canceled")
            # one heartbeat (0.1 s) to see the flag, one permutation (~0.15 s) to reach the
            # next check; the bound leaves room for a loaded machine, far below the 9 s left
            assert stopped_after < 3.0, stopped_after
            if method == "tmc_shapley":  # a permutation is long enough to count them
                per_step = (0.8 - 0.02) / PERMUTATIONS  # the valuing phase's share of one
                assert job["progress"] <= at_cancel + 10 * per_step, (at_cancel, job["progress"])
            assert job["progress"] < 0.8 and job["summary"] is None  # nothing final about it
            for kind in ("subset", "values", "mislabels", "curves"):
                assert_problem(client.get(f"/v1/jobs/{job_id}/{kind}", headers=h), 409,
                               "job-not-succeeded")
            assert n_points(s, job_id) == 0
            assert_problem(client.post(f"/v1/jobs/{job_id}/cancel", headers=h), 409,
                           "job-finished")
            assert job_row(s, job_id).lease_owner is None
    finally:
        configure(None)
