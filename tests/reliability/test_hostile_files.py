"""Crafted uploads: each is refused with a 4xx problem+json and leaves nothing behind, neither
a file in storage nor a row; also when the failure is unexpected (a 500) or the
Idempotency-Key is misused."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from reliability_helpers import make_key, storage_files
from service_helpers import assert_problem, service_settings
from sqlalchemy import func, select

from app.core.config import configure
from app.db.models import DatasetRecord, IdempotencyRecord
from app.db.session import session_scope

pytestmark = pytest.mark.timeout(120)
CAP = 2_000_000


@pytest.fixture
def api(tmp_path):
    from fastapi.testclient import TestClient

    from app.main import create_app

    s = service_settings(tmp_path / "data", embedded_runner=False, max_upload_bytes=CAP)
    configure(s)
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        h, _ = make_key(s, "mallory")
        yield c, s, h
    configure(None)


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _pickled_npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, X=np.array([{"x": 1}, {"x": 2}], dtype=object), y=np.array([0, 1]))
    return buf.getvalue()


def _wide_csv(n_cols: int = 100_000) -> bytes:
    head = ",".join(f"c{i}" for i in range(n_cols)) + ",label\n"
    rows = "".join(",".join(["1"] * n_cols) + f",{k % 2}\n" for k in range(2))
    return (head + rows).encode()


def _many_classes_csv(n: int = 100_000) -> bytes:
    return ("a,label\n" + "".join(f"{i % 7},{i}\n" for i in range(n))).encode()


# name, bytes (built lazily), status, problem slug
CRAFTED = [
    ("oversized.csv", lambda: b"a,label\n" + b"1,0\n" * (CAP // 4 + 10), 413,
     "dataset-too-large"),
    # 80 MB of zeros in about 80 kB: expands 1000x, far past what a CSV of the cap could be
    ("bomb.npz", lambda: _npz(X=np.zeros((4000, 2500)), y=np.arange(4000) % 2), 413,
     "dataset-too-large"),
    ("pickled.npz", _pickled_npz, 422, "invalid-data"),
    ("wide.csv", _wide_csv, 422, "invalid-data"),
    ("classes.csv", _many_classes_csv, 422, "invalid-data"),
    ("sparse.libsvm", lambda: b"1 99999999:1.0\n0 1:2.0\n", 422, "invalid-data"),
    ("shapes.npz", lambda: _npz(X=np.zeros((5, 3)), y=np.array([0, 1, 0])), 422, "invalid-data"),
    ("ragged.csv", lambda: b"a,b,label\n1,2,x\n3,4,5,y\n", 422, "invalid-data"),
    ("nan.csv", lambda: b"a,b,label\n1,nan,x\n3,inf,y\n", 422, "invalid-data"),
    ("empty.csv", lambda: b"", 422, "invalid-data"),
    ("empty.npz", lambda: b"", 422, "invalid-data"),
    ("empty.parquet", lambda: b"", 422, "invalid-data"),
    ("header_only.csv", lambda: b"a,b,label\n", 422, "invalid-data"),
    ("garbage.parquet", lambda: b"PAR1" + bytes(range(256)) * 4, 422, "invalid-data"),
    ("notazip.npz", lambda: b"PK\x03\x04" + b"\x00" * 100, 422, "invalid-data"),
    ("binary.csv", lambda: bytes(range(256)) * 20, 422, "invalid-data"),
]


def _n_datasets(settings) -> int:
    with session_scope(settings) as s:
        return s.scalar(select(func.count()).select_from(DatasetRecord))


@pytest.mark.parametrize("name,make,status,slug", CRAFTED, ids=[c[0] for c in CRAFTED])
def test_crafted_file_is_refused_and_leaves_nothing(api, name, make, status, slug):
    client, settings, h = api
    data = make()
    r = client.post("/v1/datasets", headers=h, files={"file": (name, data)})
    assert_problem(r, status, slug)
    assert storage_files(settings.storage_root) == []
    assert _n_datasets(settings) == 0


def test_unicode_column_names_round_trip(api):
    client, settings, h = api
    names = ["é", "日本語", "😀 emoji", "tab\tin name"]
    frame = pd.DataFrame(np.arange(24.0).reshape(6, 4), columns=names)
    frame["label"] = ["x", "y"] * 3
    r = client.post("/v1/datasets", headers=h,
                    files={"file": ("ünï.csv", frame.to_csv(index=False).encode())})
    assert r.status_code == 201, r.text
    assert r.json()["feature_names"] == names and r.json()["name"] == "ünï.csv"


@pytest.mark.parametrize("name,body", [
    ("ok.csv", b"a,label\n1,x\n2,y\n"),  # streamed: the failure is in the batch parser
    ("ok.npz", _npz(X=np.zeros((2, 1)), y=np.array([0, 1]))),  # read whole by load_dataset
], ids=["streamed-csv", "whole-npz"])
def test_unexpected_failure_leaves_nothing(api, monkeypatch, name, body):
    import hostcp_core
    from hostcp_core.loaders import TableStream

    client, settings, h = api

    def boom(*a, **k):
        raise MemoryError("parser ran out of memory")

    monkeypatch.setattr(hostcp_core, "load_dataset", boom)
    monkeypatch.setattr(TableStream, "__iter__", boom)
    r = client.post("/v1/datasets", headers=h, files={"file": (name, body)})
    assert_problem(r, 500, "internal-error")
    assert storage_files(settings.storage_root) == [] and _n_datasets(settings) == 0


def test_idempotency_key_on_uploads(api):
    client, settings, h = api
    key = {**h, "Idempotency-Key": "0d7c3d5e-1b6a-4c1e-9a43-3f9a8f7f2b10"}
    body = b"a,b,label\n1,2,x\n3,4,y\n5,6,x\n7,8,y\n"
    first = client.post("/v1/datasets", headers=key, files={"file": ("d.csv", body)})
    assert first.status_code == 201, first.text
    files_after_first = storage_files(settings.storage_root)
    again = client.post("/v1/datasets", headers=key, files={"file": ("d.csv", body)})
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    other = client.post("/v1/datasets", headers=key, files={"file": ("d.csv", body + b"9,9,x\n")})
    assert_problem(other, 422, "idempotency-mismatch")
    assert_problem(client.post("/v1/datasets", headers={**h, "Idempotency-Key": "not-a-uuid"},
                               files={"file": ("d.csv", body)}), 422, "invalid-request")
    # neither the replay nor the refused reuse stored anything more
    assert storage_files(settings.storage_root) == files_after_first
    assert _n_datasets(settings) == 1
    with session_scope(settings) as s:
        assert s.scalar(select(func.count()).select_from(IdempotencyRecord)) == 1
