"""POST /v1/selectors/{job_id}/select on a finished HOST-CP job, through the real service."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from service_helpers import FAST_METHOD, assert_problem, upload, wait_for

pytestmark = pytest.mark.timeout(180)

HOSTCP_FAST = {"epochs": 3, "warmup_epochs": 1, "batch_size": 32, "old_set_size": 16,
               "hidden": [16]}


def _job(client, h, train, test, method, params=None) -> str:
    r = client.post("/v1/jobs", headers=h, json={
        "train_dataset_id": train["id"], "test_dataset_id": test["id"], "method": method,
        "fraction": 0.25, "seed": 0, "params": params or {}})
    assert r.status_code == 202, r.text
    job = wait_for(client, h, r.json()["id"], timeout=120)
    assert job["status"] == "succeeded", job
    return job["id"]


def test_online_selection_and_add(client, api_key_headers, other_key_headers, csv_pair):
    h = api_key_headers
    train = upload(client, h, csv_pair[0], id_column="row_id")
    test = upload(client, h, csv_pair[1], id_column="row_id")
    job_id = _job(client, h, train, test, "hostcp", HOSTCP_FAST)
    links = client.get(f"/v1/jobs/{job_id}", headers=h).json()["links"]
    assert links["selector"] == f"/v1/selectors/{job_id}/select"
    assert client.get(links["plots"], headers=h).headers["content-type"] == "image/png"
    info = client.get(f"/v1/selectors/{job_id}", headers=h).json()
    n_subset = math.ceil(0.25 * train["n_rows"])
    assert info["selected_set_size"] == n_subset and info["added_online"] == 0
    assert info["classes"] == ["neg", "pos"] and info["n_features"] == train["n_features"]

    frame = pd.read_csv(csv_pair[0]).set_index("row_id")
    subset_ids = [s["id"] for s in client.get(f"/v1/jobs/{job_id}/subset", headers=h,
                                              params={"page_size": 1000}).json()["items"]]
    other_ids = [i for i in frame.index if i not in set(subset_ids)]
    # copies of 8 selected rows (under new ids) and 8 rows that were not selected
    rows = subset_ids[:8] + other_ids[:8]
    features = frame.loc[rows].drop(columns=["label"]).to_numpy().tolist()
    body = {"features": features, "labels": frame.loc[rows, "label"].tolist(),
            "ids": [f"copy-{i}" for i in rows]}
    r = client.post(f"/v1/selectors/{job_id}/select", headers=h, json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["n_rows"] == 16 and out["n_selected"] == math.ceil(0.25 * 16)
    assert sum(it["selected"] for it in out["items"]) == out["n_selected"]
    assert out["added"] == 0 and out["selected_set_size"] == n_subset
    # a copy of a selected row is covered by that row, by its id
    own = [it["represented_by_id"] == rows[it["row"]] for it in out["items"][:8]]
    assert sum(own) >= 6, out["items"][:8]
    assert not any(it["selected"] for it in out["items"][:8])

    # add: the chosen rows join the set; asked again, they are covered by themselves
    r = client.post(f"/v1/selectors/{job_id}/select", headers=h, json={**body, "add": True})
    added = r.json()
    assert added["added"] == added["n_selected"]
    assert added["selected_set_size"] == n_subset + added["added"]
    chosen = [it for it in added["items"] if it["selected"]]
    assert [it["row"] for it in chosen] == [it["row"] for it in out["items"] if it["selected"]]
    again = client.post(f"/v1/selectors/{job_id}/select", headers=h, json=body).json()
    for it in chosen:
        assert again["items"][it["row"]]["represented_by_id"] == it["id"]
    assert client.get(f"/v1/selectors/{job_id}", headers=h).json()["added_online"] == \
        added["added"]

    bad = client.post(f"/v1/selectors/{job_id}/select", headers=h,
                      json={**body, "labels": ["cat"] * 16})
    assert_problem(bad, 422, "invalid-data")
    narrow = client.post(f"/v1/selectors/{job_id}/select", headers=h,
                         json={**body, "features": [f[:-1] for f in features]})
    assert_problem(narrow, 422, "invalid-data")
    assert_problem(client.post(f"/v1/selectors/{job_id}/select", headers=other_key_headers,
                               json=body), 404, "not-found")

    # only HOST-CP jobs keep a selector
    plain = _job(client, h, train, test, FAST_METHOD)
    assert_problem(client.post(f"/v1/selectors/{plain}/select", headers=h, json=body), 409,
                   "no-online-selector")
