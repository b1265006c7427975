"""The default method end to end on the embedded service: a job with no method is
"recommended"; its summary holds the candidate table (every candidate's validation score,
the winner and why) and its subset is the winner's."""

from __future__ import annotations

import pytest
from service_helpers import upload, wait_for

from hostcp_core.recommended import CANDIDATES

pytestmark = pytest.mark.timeout(400)


def test_default_job_is_recommended(client, api_key_headers, csv_pair):
    h = api_key_headers
    train, test = (upload(client, h, p, id_column="row_id") for p in csv_pair)
    body = {"train_dataset_id": train["id"], "test_dataset_id": test["id"], "fraction": 0.25,
            "evaluation": "none",
            "params": {"learner": "logreg", "hostcp_params": {"epochs": 3, "warmup_epochs": 1}}}
    r = client.post("/v1/jobs", headers=h, json=body)
    assert r.status_code == 202, r.text
    assert r.json()["method"] == "recommended"
    job = wait_for(client, h, r.json()["id"], timeout=360)
    assert job["status"] == "succeeded", job
    extra = job["summary"]["extra"]
    table = {row["candidate"]: row for row in extra["candidates"]}
    assert set(table) == set(CANDIDATES)
    scored = {c: row for c, row in table.items() if "skipped" not in row}
    assert [c for c, row in scored.items() if row["winner"]] == [extra["winner"]]
    best = max(row["validation_accuracy_mean"] for row in scored.values())
    winner = scored[extra["winner"]]
    # the winner is the best, or tied with it within one paired standard error
    assert winner["validation_accuracy_mean"] >= best - winner["paired_se_vs_leader"] - 1e-12
    assert extra["why"] and extra["learner"] == "logreg" and extra["budget"]["per_candidate"]
    subset = client.get(f"/v1/jobs/{job['id']}/subset", headers=h,
                        params={"page_size": 1000}).json()["items"]
    assert len(subset) == job["summary"]["n_selected"] == winner["n_selected"]
