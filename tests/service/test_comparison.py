"""Comparison jobs: several methods on the same (flipped) data and splits, scored the paper's way.

End to end on the embedded default (SQLite + the spawned runner); progress and cancel in
process with stand-in valuers; request validation; one run on Postgres + a Celery worker."""

from __future__ import annotations

import io
import math
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from service_helpers import assert_problem, upload, wait_for, write_csv_pair
from test_dashboard_browser import browser, live_service  # noqa: F401  (fixtures)
from test_postgres_celery import (  # noqa: F401  (fixtures: the same servers and worker)
    celery_worker,
    redis_url,
    server_settings,
)

from app import plotting
from app.db import repo
from app.db.migrate import upgrade
from app.db.models import CurvePoint, Job, MethodPoint, PointResult
from app.db.session import session_scope
from app.storage import Storage, dataset_arrays

pytestmark = pytest.mark.timeout(180)

METHODS = ["knn_shapley", "data_oob", "random"]
N_TRAIN, N_TEST, FLIPS, FRACTION = 200, 100, 0.1, 0.2


def _csv(client, h, url: str) -> pd.DataFrame:
    r = client.get(url, headers=h)
    assert r.status_code == 200, r.text
    return pd.read_csv(io.StringIO(r.text))


def _rank_values(rank: np.ndarray) -> np.ndarray:
    # scores that order the points as the stored ranks do (rank 1 = highest)
    return (rank.size + 1 - rank).astype(float)


@pytest.fixture
def datasets(client, api_key_headers, tmp_path):
    train_path, test_path = write_csv_pair(tmp_path, n_train=N_TRAIN, n_test=N_TEST, seed=4)
    train = upload(client, api_key_headers, train_path, id_column="row_id")
    test = upload(client, api_key_headers, test_path, id_column="row_id")
    return train, test, pd.read_csv(train_path)


def test_comparison_job_end_to_end(client, api_key_headers, datasets, settings):
    from hostcp_core.evaluation import (
        class_distribution,
        flip_detection_scores,
        flips_found_curve,
        ndcg_at_k,
    )

    h = api_key_headers
    train, test, truth = datasets
    r = client.post("/v1/jobs", headers=h, json={
        "train_dataset_id": train["id"], "test_dataset_id": test["id"], "method": "compare",
        "methods": METHODS, "params": {"data_oob": {"n_estimators": 50}},
        "inject_flips": FLIPS, "fraction": FRACTION, "seed": 2})
    assert r.status_code == 202, r.text
    assert (r.json()["methods"], r.json()["inject_flips"]) == (METHODS, FLIPS)
    # a single-method job alongside: its results ignore ?method= for its own method only
    single = client.post("/v1/jobs", headers=h, json={
        "train_dataset_id": train["id"], "test_dataset_id": test["id"], "method": "random"})
    job = wait_for(client, h, r.json()["id"], timeout=150)
    assert job["status"] == "succeeded", job
    base = f"/v1/jobs/{job['id']}"

    # the flips: seeded, the stated share, and really applied to the labels the methods saw
    flipped = job["summary"]["injected_flips"]
    comp = job["summary"]["comparison"]
    assert comp["n_flipped"] == len(flipped) == round(FLIPS * N_TRAIN)
    assert len(set(flipped)) == len(flipped) and 0 <= min(flipped) and max(flipped) < N_TRAIN
    values = _csv(client, h, f"{base}/values?format=csv")
    changed = np.flatnonzero(values["label"].to_numpy() != truth["label"].to_numpy())
    assert changed.tolist() == sorted(flipped)

    assert [m["method"] for m in comp["methods"]] == METHODS
    assert comp["default_method"] == METHODS[0]
    n_top = math.ceil(0.05 * N_TRAIN)
    full_fit = set()
    curves = client.get(f"{base}/curves", headers=h, params={"page_size": 1000}).json()["items"]
    assert {c["curve"] for c in curves} == {f"{m}:{k}" for m in METHODS
                                            for k in ("addition", "removal", "flips")}
    for rec in comp["methods"]:
        m = rec["method"]
        assert rec["run_time_s"] > 0 and rec["curves_s"] > 0
        add, rem, found = rec["addition"], rec["removal"], rec["flips_found"]
        for series in (add, rem, found):
            fr = [p["fraction"] for p in series]
            assert fr == sorted(fr) and len(set(fr)) == len(fr)
        assert FRACTION in [p["fraction"] for p in add] and add[-1]["fraction"] == 1.0
        assert rem[0]["fraction"] == 0.0
        # removing nothing and adding everything is the same fit
        assert rem[0]["accuracy"] == add[-1]["accuracy"]
        full_fit.add(add[-1]["accuracy"])
        assert [p["accuracy"] for p in add] == [c["value"] for c in curves
                                                if c["curve"] == f"{m}:addition"]
        hits = [p["found"] for p in found]
        assert hits == sorted(hits) and found[-1] == {"fraction": 1.0, "found": 1.0}
        assert 0 <= rec["flip_roc_auc"] <= 1 and 0 <= rec["ndcg"] <= 1
        assert sum(rec["top_classes"]["counts"]) == rec["top_classes"]["n_top"] == n_top

        # the summary's figures follow from the values stored for this method
        mv = _csv(client, h, f"{base}/values?format=csv&method={m}")
        assert mv["index"].tolist() == list(range(N_TRAIN))
        assert sorted(mv["rank"]) == list(range(1, N_TRAIN + 1))
        rv = _rank_values(mv["rank"].to_numpy())
        ff = flips_found_curve(rv, flipped, [p["fraction"] for p in found])
        assert ff["found"].tolist() == pytest.approx(hits)
        assert rec["ndcg"] == pytest.approx(ndcg_at_k(rv, flipped))
        assert rec["flip_roc_auc"] == pytest.approx(flip_detection_scores(rv, flipped)["roc_auc"])
        assert rec["flip_f1"] == pytest.approx(
            flip_detection_scores(mv["score"].to_numpy(), flipped)["f1"])
        codes = pd.Categorical(mv["label"], categories=comp["classes"]).codes
        cd = class_distribution(rv, codes, len(comp["classes"]), 0.05)
        assert rec["top_classes"]["counts"] == cd["counts"]
        subset = _csv(client, h, f"{base}/subset?format=csv&method={m}")
        assert len(subset) == rec["n_selected"] == math.ceil(FRACTION * N_TRAIN)
        assert set(subset["index"]) == set(mv.loc[mv["selected"], "index"])
        if m == METHODS[0]:  # the plain downloads are the first method's
            assert values[["score", "rank", "selected"]].equals(mv[["score", "rank", "selected"]])
    # every method's whole-set fit is the same model: the curves start from one point
    assert len(full_fit) == 1
    scores = {m: _csv(client, h, f"{base}/values?format=csv&method={m}")["score"] for m in METHODS}
    assert not np.allclose(scores["knn_shapley"], scores["random"])

    page = client.get(f"{base}/values", headers=h,
                      params={"method": "data_oob", "page_size": 150}).json()
    assert len(page["items"]) == 150 and page["next_page_token"]
    rest = client.get(f"{base}/values", headers=h, params={
        "method": "data_oob", "page_size": 150, "page_token": page["next_page_token"]}).json()
    assert [p["index"] for p in page["items"] + rest["items"]] == list(range(N_TRAIN))
    assert_problem(client.get(f"{base}/values", headers=h,
                              params={"method": "knn_shapley", "page_size": 150,
                                      "page_token": page["next_page_token"]}),
                   400, "invalid-page-token")  # a token is bound to its method
    assert_problem(client.get(f"{base}/values?method=loo", headers=h), 422, "invalid-request")

    # the plots draw one line or bar group per method
    for name in ("curves", "classes", "flips", "mislabels"):
        png = client.get(f"{base}/plots/{name}.png", headers=h)
        assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n", name
        svg = client.get(f"{base}/plots/{name}.svg", headers=h)
        assert ET.fromstring(svg.content).tag.endswith("svg")
        if name != "mislabels":
            assert all(m in svg.text for m in METHODS), name
    assert f"the {len(flipped)} flipped labels" in client.get(f"{base}/plots/flips.svg",
                                                              headers=h).text

    single = wait_for(client, h, single.json()["id"])
    assert single["status"] == "succeeded" and single["methods"] is None
    own = client.get(f"/v1/jobs/{single['id']}/values?method=random", headers=h)
    assert own.status_code == 200
    assert own.json() == client.get(f"/v1/jobs/{single['id']}/values", headers=h).json()
    assert_problem(client.get(f"/v1/jobs/{single['id']}/values?method=knn_shapley", headers=h),
                   422, "invalid-request")
    assert_problem(client.get(f"/v1/jobs/{single['id']}/plots/flips.png", headers=h), 404,
                   "not-found")


def test_comparison_requests_are_validated(client, api_key_headers, datasets):
    h = api_key_headers
    train, test, _ = datasets
    body = {"train_dataset_id": train["id"], "test_dataset_id": test["id"], "method": "compare",
            "methods": ["knn_shapley", "random"]}
    bad = [
        ({"methods": ["knn_shapley"]}, "invalid-request"),
        ({"methods": ["random", "knn_shapley", "random"]}, "invalid-request"),
        ({"methods": ["random"] * 11}, "invalid-request"),
        ({"methods": None}, "invalid-request"),
        ({"inject_flips": 0.6}, "invalid-request"),
        ({"inject_flips": -0.1}, "invalid-request"),
        ({"params": {"loo": {}}}, "invalid-request"),
        ({"method": "random", "methods": ["knn_shapley", "random"]}, "invalid-request"),
        ({"method": "random", "methods": None, "inject_flips": 0.1}, "invalid-request"),
        ({"methods": ["knn_shapley", "nope"]}, "invalid-parameters"),
        ({"methods": ["knn_shapley", "compare"]}, "invalid-parameters"),
        ({"params": {"random": {"bogus": 1}}}, "invalid-parameters"),
        ({"params": {"random": 3}}, "invalid-parameters"),
        ({"inject_flips": 0.001}, "invalid-parameters"),  # 0.2 of a label: nothing flipped
    ]
    for change, slug in bad:
        payload = {k: v for k, v in {**body, **change}.items() if v is not None}
        assert_problem(client.post("/v1/jobs", headers=h, json=payload), 422, slug)
    assert client.get("/v1/jobs", headers=h).json()["items"] == []  # none was queued
    # inject_flips 0 means no injection
    r = client.post("/v1/jobs", headers=h, json={**body, "inject_flips": 0})
    assert r.status_code == 202 and r.json()["inject_flips"] is None
    client.post(f"/v1/jobs/{r.json()['id']}/cancel", headers=h)


# --- in process: progress per method, cancel between methods ---------------------------------

@pytest.fixture
def compare_job(settings):
    from hostcp_core import make_synthetic

    upgrade(settings)
    train, test = make_synthetic(60, 30, seed=1, n_features=5, n_important=3)
    store = Storage(settings.storage_root)
    with session_scope(settings) as s:
        owner, _ = repo.create_api_key(s, name="w")
        ids = [repo.add_dataset(s, owner_id=owner.id, dataset=ds, name=ds.name,
                                array_path=store.save_arrays(dataset_arrays(ds))).id
               for ds in (train, test)]
        s.flush()
        return repo.create_job(s, owner_id=owner.id, train_dataset_id=ids[0],
                               test_dataset_id=ids[1], method="compare", params={},
                               methods=["first", "second"], inject_flips=0.1, fraction=0.25,
                               seed=0, queue="cpu", max_attempts=3).id


class _Scripted:
    """A stand-in valuer: ``steps`` progress events, ``hook(i, progress)`` before each."""

    def __init__(self, name, seen, steps=5, hook=None, delay=0.0):
        self.name, self.seen, self.steps, self.hook, self.delay = name, seen, steps, hook, delay

    def fit(self, train, test, *, progress=None):
        import time

        from hostcp_core import Progress, ValuationResult

        for i in range(self.steps):
            if self.hook:
                self.hook(i)
            time.sleep(self.delay)
            progress(Progress("inner", i + 1, self.steps))
            self.seen.append((progress.reporter.stage, progress.reporter.progress))
        rng = np.random.default_rng(len(self.name))
        return ValuationResult.from_values(rng.random(train.n), 0.25, self.name)


def test_progress_per_method_and_cancel_between_methods(settings, compare_job, monkeypatch):
    from app.jobs import comparison
    from app.jobs.run_job import run_job

    seen: list = []
    scripted = {"first": _Scripted("first", seen), "second": _Scripted("second", seen)}
    monkeypatch.setattr(comparison, "build_valuers", lambda methods, **kw: scripted)
    assert run_job(compare_job, settings=settings) == "succeeded"
    stages = [s for s, _ in seen]
    assert stages[:5] == ["first 1/2:valuing:inner"] * 5
    assert stages[5:] == ["second 2/2:valuing:inner"] * 5
    progress = [p for _, p in seen]
    assert progress == sorted(progress)
    lo, hi = comparison.SPAN
    mid = lo + (hi - lo) / 2  # the first method's slice ends halfway
    assert progress[4] <= mid < progress[5] and progress[-1] < hi
    with session_scope(settings) as s:
        job = s.get(Job, compare_job)
        assert [m["method"] for m in job.summary["comparison"]["methods"]] == ["first", "second"]
        n_mp = s.query(MethodPoint).filter_by(job_id=compare_job).count()
        assert n_mp == 2 * job.summary["n_train"]

    # a rerun that is canceled while the second method runs stops there and stores nothing
    def cancel(i):
        if i == 0:
            with session_scope(settings) as s:
                s.get(Job, compare_job).cancel_requested = True
    scripted["second"] = _Scripted("second", seen, steps=200, hook=cancel, delay=0.01)
    with session_scope(settings) as s:  # back to queued, results of the first run removed
        job = s.get(Job, compare_job)
        job.status, job.attempts, job.summary = "queued", 0, None
        for model in (PointResult, CurvePoint, MethodPoint):
            s.query(model).filter_by(job_id=compare_job).delete()
    seen.clear()
    assert run_job(compare_job, settings=settings) == "canceled"
    assert len(seen) < 200 and seen[-1][0] == "second 2/2:valuing:inner"
    with session_scope(settings) as s:
        assert s.get(Job, compare_job).status == "canceled"
        assert s.query(MethodPoint).filter_by(job_id=compare_job).count() == 0


def test_comparison_renderers_reflect_their_data():
    methods = ["a", "b"]
    rows = [{"curve": f"{m}:{k}", "fraction": f, "value": v}
            for m in methods for k in ("addition", "removal")
            for f, v in ((0.0 if k == "removal" else 0.25, 0.6), (0.5, 0.7), (1.0, 0.8))
            if not (k == "removal" and f == 1.0)]
    a = plotting.render_comparison_curves(rows, methods, fmt="svg")
    b = plotting.render_comparison_curves([{**r, "value": 1 - r["value"]} for r in rows],
                                          methods, fmt="svg")
    assert a != b and b"<!-- a -->" in a and b"<!-- b -->" in a
    assert plotting.render_comparison_curves(rows, methods, fmt="svg") == a
    flips = plotting.render_flips_by_method({"a": [0, 1, 2, 3], "b": [3, 2, 1, 0]}, [0],
                                            fmt="svg")
    assert b"the 1 flipped labels" in flips and b"<!-- b -->" in flips
    assert plotting.method_colors(["x", "y"]) == {"x": "C0", "y": "C1"}


# --- Postgres + a real Celery worker ----------------------------------------------------------

@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_comparison_on_postgres_and_celery(server_settings, celery_worker,  # noqa: F811
                                           tmp_path):
    from fastapi.testclient import TestClient
    from sqlalchemy import text

    from app.main import create_app

    s = server_settings
    with session_scope(s) as sess:
        _, token = repo.create_api_key(sess, name="pg")
    h = {"Authorization": f"Bearer {token}"}
    train_path, test_path = write_csv_pair(tmp_path)
    with TestClient(create_app(s)) as client:
        train = upload(client, h, train_path, id_column="row_id")
        test = upload(client, h, test_path, id_column="row_id")
        r = client.post("/v1/jobs", headers=h, json={
            "train_dataset_id": train["id"], "test_dataset_id": test["id"],
            "method": "compare", "methods": ["knn_shapley", "random"], "inject_flips": 0.1})
        assert r.status_code == 202, r.text
        job = wait_for(client, h, r.json()["id"], timeout=180)
        assert job["status"] == "succeeded", job
        assert client.get(f"/v1/jobs/{job['id']}/plots/curves.png", headers=h).status_code == 200
    n = train["n_rows"]
    with session_scope(s) as sess:
        per_method = dict(sess.execute(text(
            "SELECT method, count(*) FROM job_method_points WHERE job_id = :j GROUP BY method"),
            {"j": job["id"]}).all())
    assert per_method == {"knn_shapley": n, "random": n}
    assert len(job["summary"]["injected_flips"]) == round(0.1 * n)


# --- the dashboard in headless Chromium ---------------------------------------------------------

def test_dashboard_shows_a_comparison(live_service, browser, tmp_path):  # noqa: F811
    import httpx
    from selenium.webdriver.common.by import By
    from test_dashboard_browser import ARTIFACTS, _wait

    base, settings = live_service
    with session_scope(settings) as s:
        _, token = repo.create_api_key(s, name="browser")
    methods = ["knn_shapley", "random"]
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"},
                      timeout=30) as api:
        ids = {}
        for part, path in zip(("train", "test"), write_csv_pair(tmp_path, n_train=120),
                              strict=True):
            with open(path, "rb") as fh:
                r = api.post("/v1/datasets", files={"file": (path.name, fh)},
                             data={"id_column": "row_id"})
            ids[part] = r.json()["id"]
        r = api.post("/v1/jobs", json={"train_dataset_id": ids["train"],
                                       "test_dataset_id": ids["test"], "method": "compare",
                                       "methods": methods, "inject_flips": 0.1})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]

        browser.get(f"{base}/dashboard")
        browser.find_element(By.ID, "api-key").send_keys(token)
        browser.find_element(By.ID, "save-key").click()
        _wait(lambda: browser.execute_script(
            "return document.querySelector('#detail-status').textContent") == "succeeded",
            90, "the comparison job to succeed on the page")
        job = api.get(f"/v1/jobs/{job_id}").json()

    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#comparison-table tbody tr"), 10,
          "the comparison table")
    assert browser.find_element(By.ID, "comparison").is_displayed()
    rows = browser.find_elements(By.CSS_SELECTOR, "#comparison-table tbody tr")
    assert [r.get_attribute("data-method") for r in rows] == methods
    for row, rec in zip(rows, job["summary"]["comparison"]["methods"], strict=True):
        cells = row.text.split()
        assert cells[0] == rec["method"] and cells[2] == f"{rec['flip_roc_auc']:.3f}"
        assert cells[3] == f"{rec['ndcg']:.3f}"
    for img_id, width in (("plot-curves", 1000), ("plot-flips", 640)):
        img = browser.find_element(By.ID, img_id)
        _wait(lambda img=img: img.get_attribute("data-loaded") == "1", 20, img_id)
        assert browser.execute_script("return arguments[0].naturalWidth", img) == width
    buttons = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#downloads button")]
    assert {"values-knn_shapley.csv", "values-random.csv", "flips.png"} <= set(buttons)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard-comparison.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    logs = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not logs, logs


@pytest.mark.parametrize("depth", ["quick", "none"])
def test_comparison_follows_the_evaluation_depth(settings, compare_job, monkeypatch, depth):
    from app.jobs import comparison
    from app.jobs.run_job import run_job

    seen: list = []
    scripted = {"first": _Scripted("first", seen), "second": _Scripted("second", seen)}
    monkeypatch.setattr(comparison, "build_valuers", lambda methods, **kw: scripted)
    with session_scope(settings) as s:
        s.get(Job, compare_job).evaluation = depth
    assert run_job(compare_job, settings=settings) == "succeeded"
    with session_scope(settings) as s:
        job = s.get(Job, compare_job)
        comp = job.summary["comparison"]
        kinds = {c.curve for c in s.query(CurvePoint).filter_by(job_id=compare_job)}
    assert comp["evaluation"] == depth
    for rec in comp["methods"]:
        if depth == "none":
            assert rec["addition"] == [] and rec["removal"] == []
        else:
            assert [p["fraction"] for p in rec["addition"]] == comp["addition_fractions"]
            assert [p["fraction"] for p in rec["removal"]] == comp["removal_fractions"]
    drawn = {f"{m}:{k}" for m in ("first", "second") for k in ("addition", "removal")}
    assert (kinds & drawn) == (set() if depth == "none" else drawn)
    assert {f"{m}:flips" for m in ("first", "second")} <= kinds
