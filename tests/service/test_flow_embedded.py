"""The whole flow on the embedded default: the real app, SQLite, the real spawned runner."""

from __future__ import annotations

import io
import math

import pandas as pd
import pytest
from service_helpers import FAST_METHOD, assert_problem, upload, wait_for

pytestmark = pytest.mark.timeout(240)


def _all_pages(client, headers, url: str, page_size: int) -> list[dict]:
    items, token, pages = [], None, 0
    while True:
        params = {"page_size": page_size, **({"page_token": token} if token else {})}
        body = client.get(url, headers=headers, params=params).json()
        items += body["items"]
        pages += 1
        token = body.get("next_page_token")
        if not token:
            return items
        assert pages < 100


def test_upload_job_poll_download(client, api_key_headers, csv_pair, settings):
    h = api_key_headers
    train_path, test_path = csv_pair
    train = upload(client, h, train_path, id_column="row_id")
    test = upload(client, h, test_path, id_column="row_id")
    truth = pd.read_csv(train_path)
    assert (train["n_rows"], train["n_features"]) == truth.drop(columns=["row_id", "label"]).shape
    assert train["classes"] == ["neg", "pos"]
    assert sum(train["class_counts"]) == len(truth)
    # content-addressed: the same bytes and options give the same dataset back
    again = client.post("/v1/datasets", headers=h,
                        files={"file": (train_path.name, train_path.read_bytes())},
                        data={"id_column": "row_id"})
    assert again.status_code == 200 and again.json()["id"] == train["id"]
    assert client.get(f"/v1/datasets/{train['id']}", headers=h).json()["sha256"] == train["sha256"]
    listed = client.get("/v1/datasets", headers=h, params={"page_size": 1}).json()
    assert len(listed["items"]) == 1 and listed["next_page_token"]

    fraction = 0.2
    r = client.post("/v1/jobs", headers=h, json={
        "train_dataset_id": train["id"], "test_dataset_id": test["id"], "method": FAST_METHOD,
        "fraction": fraction, "seed": 3})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.headers["location"] == f"/v1/jobs/{job_id}"
    assert r.json()["status"] in ("queued", "running")
    # results before the end are a 409, not an empty list
    early = client.get(f"/v1/jobs/{job_id}/values", headers=h)
    if early.status_code != 200:
        assert_problem(early, 409, "job-not-finished")

    job = wait_for(client, h, job_id)
    assert job["status"] == "succeeded", job
    assert job["progress"] == 1.0 and job["attempts"] == 1
    assert job["started_at"] and job["finished_at"] and job["timings"]["total_s"] > 0
    n = len(truth)

    values = _all_pages(client, h, f"/v1/jobs/{job_id}/values", page_size=17)
    assert [v["index"] for v in values] == list(range(n))  # every point once, in order
    assert [v["id"] for v in values] == truth["row_id"].tolist()
    assert [v["label"] for v in values] == truth["label"].tolist()
    assert sorted(v["rank"] for v in values) == list(range(1, n + 1))
    by_rank = sorted(values, key=lambda v: v["rank"])
    assert all(a["score"] >= b["score"] for a, b in zip(by_rank, by_rank[1:], strict=False))

    subset = _all_pages(client, h, f"/v1/jobs/{job_id}/subset", page_size=5)
    assert len(subset) == math.ceil(fraction * n)
    assert {s["index"] for s in subset} == {v["index"] for v in values if v["selected"]}

    mislabels = _all_pages(client, h, f"/v1/jobs/{job_id}/mislabels", page_size=30)
    assert [m["rank"] for m in mislabels] == list(range(1, n + 1))
    assert sorted(m["index"] for m in mislabels) == list(range(n))
    assert all(a["score"] <= b["score"] for a, b in zip(mislabels, mislabels[1:], strict=False))
    assert {m["given_label"] for m in mislabels} <= {"neg", "pos"}

    curves = _all_pages(client, h, f"/v1/jobs/{job_id}/curves", page_size=2)
    names = {c["curve"] for c in curves}
    assert names == {"addition", "random", "subset"}
    addition = [c for c in curves if c["curve"] == "addition"]
    assert [c["fraction"] for c in addition] == list(settings.curve_fractions)
    assert all(0.0 <= c["value"] <= 1.0 for c in curves)

    # CSV and Parquet carry the same rows as the JSON pages
    csv = client.get(f"/v1/jobs/{job_id}/values", headers=h, params={"format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv")
    frame = pd.read_csv(io.StringIO(csv.text))
    assert frame["rank"].tolist() == [v["rank"] for v in values]
    assert frame["score"].tolist() == pytest.approx([v["score"] for v in values])
    sub_csv = pd.read_csv(io.StringIO(client.get(f"/v1/jobs/{job_id}/subset", headers=h,
                                                 params={"format": "csv"}).text))
    assert sub_csv["index"].tolist() == [s["index"] for s in subset]
    mis = client.get(f"/v1/jobs/{job_id}/mislabels", headers=h, params={"format": "parquet"})
    mis_frame = pd.read_parquet(io.BytesIO(mis.content))
    assert list(mis_frame.columns) == ["index", "id", "given_label", "suggested_label",
                                       "suggested_prob", "label_error_prob", "score", "rank",
                                       "suspected"]
    assert mis_frame["index"].tolist() == [m["index"] for m in mislabels]
    cur_csv = pd.read_csv(io.StringIO(client.get(f"/v1/jobs/{job_id}/curves", headers=h,
                                                 params={"format": "csv"}).text))
    assert len(cur_csv) == len(curves)

    # the job list shows it; cancel after the end is refused
    jobs = client.get("/v1/jobs", headers=h).json()["items"]
    assert [j["id"] for j in jobs] == [job_id]
    assert_problem(client.post(f"/v1/jobs/{job_id}/cancel", headers=h), 409, "job-finished")

    # operational surface
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["broker"] == "ok"
    metrics = client.get("/metrics").text
    assert 'hostcp_jobs{status="succeeded"} 1.0' in metrics
    assert "hostcp_http_requests_total" in metrics
    assert client.get("/openapi.json").json()["info"]["title"] == "hostcp"


def test_cancel_queued_job_and_idempotency_key(client, api_key_headers, csv_pair, settings):
    h = api_key_headers
    train = upload(client, h, csv_pair[0], id_column="row_id")
    test = upload(client, h, csv_pair[1], id_column="row_id")
    body = {"train_dataset_id": train["id"], "test_dataset_id": test["id"],
            "method": FAST_METHOD, "fraction": 0.5}
    key = {"Idempotency-Key": "6f1c2b1e-8a8e-4b8a-9d59-6f0f5c1e2a11"}
    first = client.post("/v1/jobs", headers={**h, **key}, json=body)
    replay = client.post("/v1/jobs", headers={**h, **key}, json=body)
    assert first.status_code == replay.status_code == 202
    assert replay.json()["id"] == first.json()["id"]
    assert replay.headers.get("idempotent-replayed") == "true"
    assert_problem(client.post("/v1/jobs", headers={**h, **key}, json={**body, "seed": 9}), 422,
                   "idempotency-mismatch")
    # cancel: queued jobs end at once, running ones at their next progress event
    r = client.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=h)
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    job = wait_for(client, h, first.json()["id"])
    assert job["status"] in ("canceled", "succeeded")  # it may have finished before the cancel
    if job["status"] == "canceled":
        assert_problem(client.get(f"/v1/jobs/{job['id']}/subset", headers=h), 409,
                       "job-not-succeeded")
