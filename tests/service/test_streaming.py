"""Streamed downloads: CSV and Parquet files equal the JSON pages row for row (across many
keyset batches, an exact multiple of the batch size, empty listings, a comparison job's
methods), and no batch reads more than the download batch size."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import insert, update

from app.api.routes import results
from app.db import repo
from app.db.models import CurvePoint, Job, JobStatus, MethodPoint, PointResult
from app.db.session import session_scope

pytestmark = pytest.mark.timeout(120)

N = 1_234
BATCH = 300


def _finished_job(settings, *, n: int, method: str = "knn_shapley",
                  methods: list[str] | None = None) -> tuple[dict, str]:
    """A key and a succeeded job owned by it, with ``n`` result rows written directly (the
    downloads only read rows; no valuation needs to run)."""
    from app.storage import Storage, dataset_arrays
    from hostcp_core import make_synthetic

    rng = np.random.default_rng(0)
    train, _ = make_synthetic(20, 10, seed=0, n_features=3, n_important=2)
    store = Storage(settings.storage_root)
    with session_scope(settings) as s:
        owner, token = repo.create_api_key(s, name="streamer")
        rec = repo.add_dataset(s, owner_id=owner.id, dataset=train, name="t",
                               array_path=store.save_arrays(dataset_arrays(train)))
        s.flush()
        job = repo.create_job(s, owner_id=owner.id, train_dataset_id=rec.id,
                              test_dataset_id=rec.id, method=method, params={}, fraction=0.1,
                              seed=0, queue="cpu", max_attempts=1, methods=methods)
        s.execute(update(Job).where(Job.id == job.id).values(status=JobStatus.SUCCEEDED))
        scores = rng.normal(size=n)
        scores[::97] = np.inf  # non-finite scores are served as nulls
        ranks = rng.permutation(n) + 1
        mis_ranks = rng.permutation(n) + 1
        s.execute(insert(PointResult), [
            {"job_id": job.id, "point_index": i,
             "point_id": None if i % 50 == 3 else f"id-{i}, \"quoted\"",
             "score": float(scores[i]), "rank": int(ranks[i]), "selected": bool(i % 7 == 0),
             "given_label": ["a", "b", "c"][i % 3],
             "suggested_label": ["a", "b", "c"][(i + 1) % 3], "mislabel_score": float(-i / n),
             "mislabel_rank": int(mis_ranks[i]), "suspected_mislabel": bool(i % 11 == 0)}
            for i in range(n)])
        s.execute(insert(CurvePoint), [
            {"job_id": job.id, "curve": c, "step": k, "fraction": (k + 1) / 40,
             "n_points": k * 3, "value": float(rng.random())}
            for c in ("addition", "random", "subset") for k in range(40)])
        for m in methods or []:
            s.execute(insert(MethodPoint), [
                {"job_id": job.id, "method": m, "point_index": i, "score": float(rng.random()),
                 "rank": int(r) + 1, "selected": bool(i % 5 == 0)}
                for i, r in enumerate(rng.permutation(n))])
        return {"Authorization": f"Bearer {token}"}, job.id


def _pages(client, h, url: str, **params) -> list[dict]:
    items, token = [], None
    while True:
        q = {**params, "page_size": 1000, **({"page_token": token} if token else {})}
        r = client.get(url, headers=h, params=q)
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        token = body.get("next_page_token")
        if not token:
            return items


def _download(client, h, url: str, fmt: str, **params) -> list[dict]:
    r = client.get(url, headers=h, params={**params, "format": fmt})
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"].endswith(f'.{fmt}"')
    if fmt == "csv":
        frame = pd.read_csv(io.StringIO(r.text), keep_default_na=False, na_values=[""],
                            dtype={"id": str})
    else:
        frame = pd.read_parquet(io.BytesIO(r.content))
    return frame.to_dict("records")


def _same(file_rows: list[dict], page_rows: list[dict]) -> None:
    assert len(file_rows) == len(page_rows)
    for got, want in zip(file_rows, page_rows, strict=True):
        assert list(got) == list(want)
        for k, v in want.items():
            g = got[k]
            if v is None:
                assert g is None or (isinstance(g, float) and math.isnan(g)), (k, g)
            elif isinstance(v, bool):
                assert bool(g) == v, (k, g, v)
            elif isinstance(v, float):
                assert g == pytest.approx(v, rel=0, abs=0), (k, g, v)  # exact round trip
            else:
                assert g == v, (k, g, v)


LISTINGS = [("values", {}), ("subset", {}), ("mislabels", {}),
            ("mislabels", {"suspected_only": "true"}), ("curves", {})]


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(results, "DOWNLOAD_BATCH", BATCH)


@pytest.mark.parametrize("n", [N, 4 * BATCH], ids=["ragged", "multiple-of-batch"])
def test_files_equal_the_json_pages(client, settings, small_batches, n):
    h, job_id = _finished_job(settings, n=n)
    for kind, params in LISTINGS:
        url = f"/v1/jobs/{job_id}/{kind}"
        pages = _pages(client, h, url, **params)
        assert pages, kind
        for fmt in ("csv", "parquet"):
            _same(_download(client, h, url, fmt, **params), pages)
    values = _pages(client, h, f"/v1/jobs/{job_id}/values")
    assert [v["index"] for v in values] == list(range(n))
    mis = _pages(client, h, f"/v1/jobs/{job_id}/mislabels")
    assert [v["rank"] for v in mis] == list(range(1, n + 1))


def test_comparison_methods_stream_like_their_pages(client, settings, small_batches):
    h, job_id = _finished_job(settings, n=N, method="compare",
                              methods=["knn_shapley", "random"])
    for kind in ("values", "subset"):
        url = f"/v1/jobs/{job_id}/{kind}"
        pages = _pages(client, h, url, method="random")
        assert len(pages) == (N if kind == "values" else len(range(0, N, 5)))
        for fmt in ("csv", "parquet"):
            _same(_download(client, h, url, fmt, method="random"), pages)


def test_empty_listing_is_a_file_with_its_columns(client, settings):
    h, job_id = _finished_job(settings, n=5)  # index 0 is the only suspect of five
    with session_scope(settings) as s:
        s.execute(update(PointResult).where(PointResult.job_id == job_id)
                  .values(suspected_mislabel=False))
    for fmt in ("csv", "parquet"):
        r = client.get(f"/v1/jobs/{job_id}/mislabels", headers=h,
                       params={"format": fmt, "suspected_only": "true"})
        assert r.status_code == 200, r.text
        frame = (pd.read_csv(io.StringIO(r.text)) if fmt == "csv"
                 else pd.read_parquet(io.BytesIO(r.content)))
        assert len(frame) == 0
        assert list(frame.columns) == ["index", "id", "given_label", "suggested_label",
                                       "score", "rank", "suspected"]


def test_downloads_read_bounded_batches(client, settings, small_batches, monkeypatch):
    """The file is built from keyset batches of at most DOWNLOAD_BATCH rows, never one query
    for every row."""
    h, job_id = _finished_job(settings, n=N)
    calls = []
    real = repo.point_rows

    def spy(session, **kw):
        calls.append((kw["after"], kw["limit"]))
        return real(session, **kw)

    monkeypatch.setattr(repo, "point_rows", spy)
    r = client.get(f"/v1/jobs/{job_id}/values", headers=h, params={"format": "parquet"})
    assert r.status_code == 200
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(io.BytesIO(r.content))
    assert pf.metadata.num_rows == N
    assert pf.metadata.num_row_groups == math.ceil(N / BATCH)  # one row group per batch
    assert [limit for _, limit in calls] == [BATCH] * math.ceil(N / BATCH)
    assert [after for after, _ in calls] == [None] + [BATCH * k - 1
                                                      for k in range(1, math.ceil(N / BATCH))]
