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
             "suggested_prob": None if i % 13 == 0 else float(rng.random()),
             "label_error_prob": float(rng.random()),
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
        assert list(frame.columns) == results.MISLABEL_COLUMNS


def test_downloads_read_bounded_batches(client, settings, small_batches, monkeypatch):
    """A file is one query read in batches of at most DOWNLOAD_BATCH rows (one Parquet row
    group each), never all its rows at once."""
    h, job_id = _finished_job(settings, n=N)
    sizes = []
    real = repo.iter_rows

    def spy(session, statement, *, batch):
        for part in real(session, statement, batch=batch):
            sizes.append(len(part))
            yield part

    monkeypatch.setattr(repo, "iter_rows", spy)
    r = client.get(f"/v1/jobs/{job_id}/values", headers=h, params={"format": "parquet"})
    assert r.status_code == 200
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(io.BytesIO(r.content))
    assert pf.metadata.num_rows == N
    assert pf.metadata.num_row_groups == math.ceil(N / BATCH)  # one row group per batch
    assert sizes == [BATCH] * (N // BATCH) + [N % BATCH]


# --- uploads parsed batch by batch ------------------------------------------------------------

def _tables(rng) -> dict[str, tuple[pd.DataFrame, dict]]:
    n = 3_000
    base = pd.DataFrame(rng.normal(size=(n, 4)), columns=["a", "b", "é c", "d"])
    with_ids = base.assign(label=rng.choice(["x", "yy", "zzz"], n))
    with_ids.insert(0, "id", [f"row-{i}" if i % 700 else "r" for i in range(n)])
    with_ids.loc[n - 1, "id"] = "a much longer id in the last batch"
    return {
        "ids.csv": (with_ids, {}),
        "ids.parquet": (with_ids, {}),
        "ids.tsv": (with_ids, {}),
        "numeric_labels.csv": (base.assign(target=rng.integers(0, 3, n).astype(float)), {}),
        "bool_labels.csv": (base.assign(y=rng.choice([True, False], n)), {}),
        "int_labels.parquet": (base.assign(cls=rng.integers(0, 4, n)), {"label_column": "cls"}),
        "int_ids.parquet": (base.assign(label=rng.choice(["p", "q"], n), id=np.arange(n)), {}),
        "category.parquet": (base.assign(label=pd.Categorical(rng.choice(["u", "v"], n))), {}),
    }


def _write(frame: pd.DataFrame, path) -> None:
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False, sep="\t" if path.suffix == ".tsv" else ",")


@pytest.mark.parametrize("name", list(_tables(np.random.default_rng(0))))
def test_streamed_arrays_equal_load_dataset(tmp_path, name):
    """Stored arrays written from small batches are byte for byte those of load_dataset."""
    from app.storage import Storage, dataset_arrays
    from hostcp_core.loaders import TableStream, load_dataset

    frame, kw = _tables(np.random.default_rng(0))[name]
    path = tmp_path / name
    _write(frame, path)
    store = Storage(tmp_path / "store")
    table = store.save_stream(TableStream(path, batch_bytes=1 << 15, **kw), max_classes=10)
    got = store.load_arrays(table.array_path)
    ds = load_dataset(path, **kw)
    want = dataset_arrays(ds)
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), k
    assert table.classes == ds.classes and np.array_equal(table.y, ds.y)
    assert (table.n, table.n_features) == (ds.n, ds.n_features)


def test_streamed_uploads_keep_their_records(client, api_key_headers, settings, tmp_path):
    """An upload through the API (CSV and Parquet of the same table) records what
    load_dataset finds in the file, and the job loader reads its arrays back."""
    from app.storage import Storage, arrays_dataset
    from hostcp_core.loaders import load_dataset

    frame, _ = _tables(np.random.default_rng(1))["ids.csv"]
    frame = frame.iloc[:1500]  # under the test settings' 200 kB upload cap
    for name in ("t.csv", "t.parquet"):
        path = tmp_path / name
        _write(frame, path)
        with open(path, "rb") as fh:
            r = client.post("/v1/datasets", headers=api_key_headers, files={"file": (name, fh)})
        assert r.status_code == 201, r.text
        rec = r.json()
        ds = load_dataset(path)
        assert rec["n_rows"] == ds.n and rec["n_features"] == ds.n_features
        assert rec["classes"] == list(ds.classes)
        assert rec["class_counts"] == np.bincount(ds.y).tolist()
        assert rec["feature_names"] == list(ds.feature_names)
        with session_scope(settings) as s:
            array_path = repo.get_dataset(s, owner_id=_owner(s, api_key_headers),
                                          dataset_id=rec["id"]).array_path
        back = arrays_dataset(Storage(settings.storage_root).load_arrays(array_path))
        assert np.array_equal(back.X, ds.X) and np.array_equal(back.y, ds.y)
        assert [str(i) for i in back.ids] == [str(i) for i in ds.ids]


def _owner(session, headers) -> int:
    token = headers["Authorization"].split()[1]
    return repo.authenticate(session, token=token).id


def test_stored_arrays_load_as_make_dataset_builds_them():
    """arrays_dataset's vectorised label encoding gives make_dataset's Dataset, also for a
    test set encoded against the training classes, and its error for an unseen label."""
    from app.storage import arrays_dataset, dataset_arrays
    from hostcp_core import DataError, make_dataset

    rng = np.random.default_rng(3)
    n = 5_000
    X = rng.normal(size=(n, 4))
    labels = rng.choice(["gamma", "alpha", "10", "9", "beta"], n)
    ids = np.array([f"r{i}" for i in range(n)])
    arrays = dataset_arrays(make_dataset(X, labels, ids=ids, feature_names=list("abcd")))
    for classes in (None, ["beta", "9", "gamma", "alpha", "10", "unused"]):
        got = arrays_dataset(arrays, classes=classes, name="t")
        want = make_dataset(arrays["X"], arrays["labels"], ids=arrays["ids"], name="t",
                            classes=classes or [str(c) for c in arrays["classes"]],
                            feature_names=[str(f) for f in arrays["feature_names"]])
        assert got.classes == want.classes and got.feature_names == want.feature_names
        assert got.y.dtype == want.y.dtype and np.array_equal(got.y, want.y)
        assert got.X.dtype == want.X.dtype and np.array_equal(got.X, want.X)
        assert np.array_equal(got.ids, want.ids) and got.name == want.name
    messages = []
    for build in (lambda: arrays_dataset(arrays, classes=["alpha", "beta"], name="te"),
                  lambda: make_dataset(arrays["X"], arrays["labels"], classes=["alpha", "beta"],
                                       name="te")):
        with pytest.raises(DataError) as err:
            build()
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "'10'" in messages[0]
