"""Retries that arrive together: the same Idempotency-Key sent concurrently makes one job (the
others are replays or a 409 in-flight), and the same file uploaded concurrently makes one
dataset (content addressing), never a 500."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from reliability_helpers import make_key
from service_helpers import FAST_METHOD, service_settings, upload
from sqlalchemy import func, select

from app.core.config import configure
from app.db.models import DatasetRecord, Job
from app.db.session import session_scope

pytestmark = pytest.mark.timeout(120)
N = 8


@pytest.fixture
def api(tmp_path):
    from fastapi.testclient import TestClient

    from app.main import create_app

    s = service_settings(tmp_path / "data", embedded_runner=False)
    configure(s)
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        h, _ = make_key(s, "retry")
        yield c, s, h
    configure(None)


def _count(settings, model) -> int:
    with session_scope(settings) as s:
        return s.scalar(select(func.count()).select_from(model))


def test_concurrent_retries_of_one_job_submit(api, csv_pair):
    client, settings, h = api
    train = upload(client, h, csv_pair[0], id_column="row_id")
    test = upload(client, h, csv_pair[1], id_column="row_id")
    body = {"train_dataset_id": train["id"], "test_dataset_id": test["id"],
            "method": FAST_METHOD, "fraction": 0.5}
    headers = {**h, "Idempotency-Key": "3b0c7a52-6f0e-4d39-9a3e-0d1c2b3a4f56"}
    with ThreadPoolExecutor(N) as pool:
        answers = list(pool.map(lambda _: client.post("/v1/jobs", headers=headers, json=body),
                                range(N)))
    codes = sorted(r.status_code for r in answers)
    assert set(codes) <= {202, 409}, [r.text for r in answers]
    job_ids = {r.json()["id"] for r in answers if r.status_code == 202}
    assert len(job_ids) == 1 and _count(settings, Job) == 1, codes
    # once settled, a retry replays the one job
    again = client.post("/v1/jobs", headers=headers, json=body)
    assert again.status_code == 202 and again.json()["id"] in job_ids


def test_concurrent_uploads_of_one_file(api, csv_pair):
    client, settings, h = api
    data = csv_pair[0].read_bytes()

    def post(_):
        return client.post("/v1/datasets", headers=h, files={"file": ("t.csv", data)},
                           data={"id_column": "row_id"})

    with ThreadPoolExecutor(N) as pool:
        answers = list(pool.map(post, range(N)))
    codes = sorted(r.status_code for r in answers)
    assert set(codes) <= {200, 201}, [r.text[:200] for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert _count(settings, DatasetRecord) == 1
