"""API restart: jobs accepted before it still run afterwards, since the table, not the API's
memory, is the record. The first API has no runner at all, so nothing runs before it stops."""

from __future__ import annotations

import pytest
from reliability_helpers import make_key, until
from service_helpers import FAST_METHOD, service_settings, upload

from app.core.config import configure

pytestmark = pytest.mark.timeout(120)


def test_jobs_submitted_before_an_api_restart_still_run(tmp_path, csv_pair):
    from fastapi.testclient import TestClient

    from app.main import create_app

    first = service_settings(tmp_path / "data", embedded_runner=False)
    configure(first)
    try:
        with TestClient(create_app(first)) as client:
            h, _ = make_key(first, "r")
            train = upload(client, h, csv_pair[0], id_column="row_id")
            test = upload(client, h, csv_pair[1], id_column="row_id")
            ids = [client.post("/v1/jobs", headers=h, json={
                "train_dataset_id": train["id"], "test_dataset_id": test["id"],
                "method": FAST_METHOD, "fraction": 0.4}).json()["id"]]
            assert {client.get(f"/v1/jobs/{i}", headers=h).json()["status"]
                    for i in ids} == {"queued"}
        # the process is gone; a new one on the same data directory picks the jobs up
        second = service_settings(tmp_path / "data")
        configure(second)
        with TestClient(create_app(second)) as client:
            def done():
                jobs = [client.get(f"/v1/jobs/{i}", headers=h).json() for i in ids]
                return jobs if all(j["status"] not in ("queued", "running") for j in jobs) \
                    else None
            jobs = until(done, 90, "the jobs to finish", every=0.3)
            assert [j["status"] for j in jobs] == ["succeeded"], jobs
            assert [j["attempts"] for j in jobs] == [1]
            subset = client.get(f"/v1/jobs/{ids[0]}/subset?page_size=1000", headers=h).json()
            assert len(subset["items"]) == round(0.4 * train["n_rows"])
    finally:
        configure(None)
