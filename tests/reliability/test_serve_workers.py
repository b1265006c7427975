"""`hostcp serve --workers 2` in embedded mode: the API processes share one runner, started and
supervised by the serving process. SIGKILL that runner mid-job: the serving process starts a
new one, which picks the job up once its lease expires and finishes it, once."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from reliability_helpers import job_row, n_points, slow_job_body, until

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from load_test import ApiServer, create_key  # noqa: E402

pytestmark = pytest.mark.timeout(150)


class ShortLeaseServer(ApiServer):
    def env(self) -> dict[str, str]:
        return {**super().env(), "HOSTCP_LEASE_S": "2", "HOSTCP_PROGRESS_INTERVAL_S": "0.2"}

    def settings(self):
        return super().settings().model_copy(update={"lease_s": 2.0})


def test_dead_shared_runner_is_restarted_and_finishes_the_job(tmp_path, csv_pair):
    from app.client import HostcpClient

    server = ShortLeaseServer(tmp_path / "srv", workers=2)
    server.data_dir.mkdir()
    server.start()
    try:
        s = server.settings()
        with HostcpClient(server.url, api_key=create_key(s)) as c:
            train = c.upload_dataset(str(csv_pair[0]), id_column="row_id")
            test = c.upload_dataset(str(csv_pair[1]), id_column="row_id")
            body = slow_job_body(train, test, 30)
            job = c.submit_job(train["id"], test["id"], method=body["method"],
                               fraction=body["fraction"], params=body["params"])

            def running():
                row = job_row(s, job["id"])
                return row.status == "running" and row.progress > 0.03 and row

            first = until(running, 60, "the job to run on the shared runner")
            pid = int(first.lease_owner.split(":")[1])  # worker_identity(): host:pid:nonce
            assert pid != server.proc.pid
            os.kill(pid, signal.SIGKILL)

            done = c.wait(job["id"], timeout=90)
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 2  # the killed run and the restarted runner's
        assert n_points(s, job["id"]) == train["n_rows"]  # one set of results
        assert "the embedded runner died; starting a new one" in \
            (server.data_dir / "api.log").read_text(errors="replace")
        assert server.proc.poll() is None
    finally:
        server.stop()
