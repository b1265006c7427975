"""max_attempts under Celery (the embedded runner's case is in test_worker_crash.py): a job whose
Celery worker is SIGKILLed mid-job each time it runs ends ``failed`` with the max-attempts
problem once its attempts are used, instead of looping. Each kill leaves the message unacked in
Redis (acks_late) and the job ``running`` with a lease that expires; the API's reaper
re-enqueues it and a fresh worker claims it (one attempt more) or, with none left, closes it."""

from __future__ import annotations

import time

import pytest
from reliability_helpers import job_row, make_key, n_points, slow_job_body, until
from server_helpers import CeleryWorker, server_mode
from service_helpers import upload

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]

MAX_ATTEMPTS = 2


def test_celery_worker_killed_each_attempt_ends_failed_max_attempts(tmp_path, csv_pair):
    from fastapi.testclient import TestClient

    from app.main import create_app

    with server_mode(tmp_path, max_attempts=MAX_ATTEMPTS) as (s, workers), \
            TestClient(create_app(s)) as client:
        h, _ = make_key(s, "ops")
        train = upload(client, h, csv_pair[0], id_column="row_id")
        test = upload(client, h, csv_pair[1], id_column="row_id")
        job_id = client.post("/v1/jobs", headers=h,
                             json=slow_job_body(train, test, 30)).json()["id"]

        def running(attempt: int):
            job = client.get(f"/v1/jobs/{job_id}", headers=h).json()
            assert job["status"] in ("queued", "running"), job  # it must not finish here
            return job["status"] == "running" and job["attempts"] == attempt \
                and job["progress"] > 0.03

        for attempt in range(1, MAX_ATTEMPTS + 1):
            worker = CeleryWorker(s, tmp_path / f"w{attempt}.log").start()
            workers.append(worker)
            until(lambda a=attempt: running(a), 120, f"attempt {attempt} to run")
            worker.kill()  # mid-valuation: no clean-up, no ack, no release
            row = job_row(s, job_id)
            assert (row.status, row.attempts) == ("running", attempt)
        assert n_points(s, job_id) == 0

        workers.append(CeleryWorker(s, tmp_path / "w_last.log").start())
        job = until(lambda: (j := client.get(f"/v1/jobs/{job_id}", headers=h).json())
                    ["status"] not in ("queued", "running") and j, 120, "the job to end",
                    every=0.3)
        assert job["status"] == "failed", job
        assert job["error"]["type"].endswith("/max-attempts"), job
        assert f"after {MAX_ATTEMPTS} attempt(s)" in job["error"]["detail"], job
        assert job["attempts"] == MAX_ATTEMPTS  # both killed deliveries, no third run
        assert n_points(s, job_id) == 0  # nothing partial stored as a result
        # the last worker received the job and closed it out, it did not run it
        assert job_id in workers[-1].log(), workers[-1].log()[-2000:]
        # no loop: several reaper periods later the job is still failed after 2 attempts
        time.sleep(4 * s.reaper_interval_s + s.lease_s)
        again = client.get(f"/v1/jobs/{job_id}", headers=h).json()
        assert (again["status"], again["attempts"]) == ("failed", MAX_ATTEMPTS), again
        print(f"\ncelery max-attempts: {MAX_ATTEMPTS} worker SIGKILLs, job failed "
              f"({job['error']['detail']}), attempts {job['attempts']}")
