"""What a job costs, visible and bounded: the evaluation depth a job asks for, the method
catalogue (GET /v1/methods, `hostcp methods`), and the 422 for a training set larger than a
method accepts — refused up front, naming the limit and the methods that fit."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from service_helpers import FAST_METHOD, assert_problem, upload, wait_for

from app.cli import main as hostcp
from hostcp_core.catalogue import catalogue, max_train

pytestmark = pytest.mark.timeout(240)


def _job(train, test, **extra) -> dict:
    return {"train_dataset_id": train["id"], "test_dataset_id": test["id"],
            "method": FAST_METHOD, "fraction": 0.25, **extra}


@pytest.fixture
def pair(client, api_key_headers, csv_pair):
    return tuple(upload(client, api_key_headers, p, id_column="row_id") for p in csv_pair)


@pytest.mark.parametrize("depth", ["quick", "full", "none"])
def test_evaluation_depth(client, api_key_headers, pair, settings, depth):
    h = api_key_headers
    r = client.post("/v1/jobs", headers=h, json=_job(*pair, evaluation=depth))
    assert r.status_code == 202, r.text
    assert r.json()["evaluation"] == depth
    job = wait_for(client, h, r.json()["id"])
    assert job["status"] == "succeeded", job
    sampled = job["summary"]["evaluation"]
    assert sampled["depth"] == depth
    curves = client.get(f"/v1/jobs/{job['id']}/curves", headers=h,
                        params={"page_size": 100}).json()["items"]
    if depth == "none":
        assert sampled["skipped"] and curves == []
        return
    assert {c["curve"] for c in curves} == {"addition", "random", "subset"}
    assert sampled["subset"]["accuracy"] == pytest.approx(
        next(c["value"] for c in curves if c["curve"] == "subset"))
    assert 0.0 <= sampled["random_subset"]["accuracy"] <= 1.0
    if depth == "quick":  # what was sampled is stated
        assert sampled["cap"] > 0 and sampled["learner"]["max_epochs"] == settings.curve_epochs
    else:
        assert sampled["cap"] is None


def test_default_depth_is_quick(client, api_key_headers, pair):
    r = client.post("/v1/jobs", headers=api_key_headers, json=_job(*pair))
    assert r.status_code == 202 and r.json()["evaluation"] == "quick"
    bad = client.post("/v1/jobs", headers=api_key_headers, json=_job(*pair, evaluation="deep"))
    assert_problem(bad, 422, "invalid-request")


def test_method_catalogue(client, api_key_headers):
    body = client.get("/v1/methods", headers=api_key_headers).json()
    entries = {m["name"]: m for m in body["catalogue"]}
    assert set(entries) == set(body["methods"])
    assert entries == {m["name"]: m for m in json.loads(json.dumps(catalogue()))
                       if m["name"] in entries}
    for m in entries.values():
        assert m["purpose"] and m["summary"] and isinstance(m["gpu"], bool)
        assert all(p["name"] for p in m["parameters"])
    assert entries["loo"]["max_train"] is not None and entries["knn_shapley"]["max_train"] is None


def test_cli_methods_prints_the_same_catalogue(capsys):
    assert hostcp(["methods", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == [m for m in json.loads(json.dumps(catalogue()))
                       if m["name"] in {e["name"] for e in printed}]


def test_method_above_its_feasible_size_is_refused(client, api_key_headers, tmp_path):
    method = min((m["name"] for m in catalogue() if m["max_train"]), key=max_train)
    limit = max_train(method)
    rng = np.random.default_rng(0)
    n = limit + 1
    train_path, test_path = tmp_path / "big.csv", tmp_path / "small.csv"
    pd.DataFrame({"x": rng.normal(size=n).round(3),
                  "label": np.where(np.arange(n) % 2, "a", "b")}).to_csv(train_path, index=False)
    pd.DataFrame({"x": [0.1, 0.2, 0.3, 0.4], "label": ["a", "b", "a", "b"]}).to_csv(
        test_path, index=False)
    train = upload(client, api_key_headers, train_path)
    test = upload(client, api_key_headers, test_path)
    r = client.post("/v1/jobs", headers=api_key_headers, json=_job(train, test, method=method))
    body = assert_problem(r, 422, "too-large-for-method")
    assert f"{limit:,}" in body["detail"] and "knn_shapley" in body["detail"]
    assert body["max_train"] == limit and body["n_train"] == n
    # the same data with a method that accepts it is taken
    ok = client.post("/v1/jobs", headers=api_key_headers,
                     json=_job(train, test, method="knn_shapley", evaluation="none"))
    assert ok.status_code == 202, ok.text
    # and a comparison including the method is refused as a whole
    cmp_ = client.post("/v1/jobs", headers=api_key_headers,
                       json=_job(train, test, method="compare", methods=["random", method]))
    assert_problem(cmp_, 422, "too-large-for-method")


API_WITHOUT_TORCH = """
import sys
from pathlib import Path
from fastapi.testclient import TestClient
from service_helpers import service_settings, upload
from app.core.config import configure
from app.db import repo
from app.db.session import session_scope
from app.main import create_app

data = Path(sys.argv[1])
settings = service_settings(data / "data", embedded_runner=False)
configure(settings)
with TestClient(create_app(settings)) as client:
    with session_scope(settings) as s:
        _, token = repo.create_api_key(s, name="me")
    h = {"Authorization": f"Bearer {token}"}
    train, test = (upload(client, h, data / f, id_column="row_id") for f in ("train.csv",
                                                                           "test.csv"))
    for method, params in (("hostcp", {"epochs": 2}), ("recommended", {"learner": "mlp"})):
        r = client.post("/v1/jobs", headers=h, json={"train_dataset_id": train["id"],
                        "test_dataset_id": test["id"], "method": method, "params": params})
        assert r.status_code == 202, r.text
    bad = client.post("/v1/jobs", headers=h, json={"train_dataset_id": train["id"],
                      "test_dataset_id": test["id"], "params": {"no_such_knob": 1}})
    assert bad.status_code == 422, bad.text
    assert client.get("/v1/methods", headers=h).json()["catalogue"]
print(sorted(m for m in ("torch", "sklearn") if m in sys.modules))
"""


def test_the_api_validates_and_lists_methods_without_loading_torch(tmp_path, csv_pair):
    # torch alone is ~180 MB of the API's memory: submits and the catalogue must not load it
    import subprocess
    import sys
    from pathlib import Path

    assert {p.parent for p in csv_pair} == {tmp_path}
    here = Path(__file__).parent
    out = subprocess.run([sys.executable, "-c", API_WITHOUT_TORCH, str(tmp_path)], cwd=here,
                         env={"PYTHONPATH": f"{here}:{here.parents[1]}", "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
