"""Distributed TMC-Shapley: chunks taken by helpers, stale and live claims, and a job whose
chunks were partly computed by a helper gives the sequential run's values."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from sqlalchemy import update

from app.db import repo
from app.db.migrate import upgrade
from app.db.models import Job, JobStatus, PointResult
from app.db.session import session_scope
from app.storage import Storage, dataset_arrays
from hostcp_core import get_valuer, make_synthetic, split_test
from hostcp_core.valuers.tmc_shapley import TMCShapley
from worker import shapley_chunks as sc

pytestmark = pytest.mark.timeout(120)

TMC = dict(max_permutations=12, check_every=3, n_bootstrap=3, err=1e-12, seed=0)


@pytest.fixture(scope="module")
def data():
    return make_synthetic(30, 30, seed=4, n_features=4, n_important=2)


@pytest.fixture
def counted(monkeypatch):
    """Which chunk indices were computed in this process, in order."""
    calls: list[int] = []
    original = TMCShapley._chunk

    def chunk(self, utility, mean_score, chunk_index, *args, **kw):
        calls.append(chunk_index)
        return original(self, utility, mean_score, chunk_index, *args, **kw)

    monkeypatch.setattr(TMCShapley, "_chunk", chunk)
    return calls


def test_helpers_and_claims_do_not_change_the_values(data, tmp_path, counted):
    train, test = data
    reference = get_valuer("tmc_shapley", **TMC).fit(train, test)
    counted.clear()
    valuer = get_valuer("tmc_shapley", **TMC)
    store = sc.ChunkStore(tmp_path / "run", stale_s=30)
    helped: list[int] = []

    def helper(c: int) -> None:
        if store.try_claim(c):
            utility = valuer.utility(train, test)
            sc.compute_chunk(valuer, utility, valuer.mean_score(utility, valuer.seed), store, c,
                             sc.chunk_sizes(valuer)[c])
            helped.append(c)

    threads: list[threading.Thread] = []

    def fan_out(indices) -> None:
        for c in indices:
            threads.append(threading.Thread(target=helper, args=(c,)))
            threads[-1].start()

    result = sc.coordinate(valuer, train, test, store, fan_out=fan_out, window=2)
    for t in threads:
        t.join()
    np.testing.assert_array_equal(result.values, reference.values)
    assert result.extra["n_chunks"] == 4 and result.extra["n_permutations"] == 12
    assert sorted(counted) == [0, 1, 2, 3]  # every chunk computed once, by someone
    assert helped, "no helper took a chunk"


def test_stale_claims_are_taken_over_and_live_ones_awaited(data, tmp_path, counted):
    train, test = data
    valuer = get_valuer("tmc_shapley", **TMC)
    reference = get_valuer("tmc_shapley", **TMC).fit(train, test)
    store = sc.ChunkStore(tmp_path / "run", stale_s=5)
    # chunk 0: claimed by a worker that died long ago; chunk 2: claimed by a live one that
    # delivers a little later
    assert store.try_claim(0) and store.try_claim(2)
    old = time.time() - 60
    os.utime(store.root / "chunk-00000.claim", (old, old))
    assert not store.try_claim(2)
    utility = valuer.utility(train, test)
    true_chunk2 = valuer._chunk(utility, valuer.mean_score(utility, 0), 2, 3, 0, None)
    counted.clear()

    def deliver() -> None:
        time.sleep(1.0)
        store.save(2, true_chunk2)

    t = threading.Thread(target=deliver)
    t.start()
    result = sc.coordinate(valuer, train, test, store, window=1, poll_s=0.05)
    t.join()
    np.testing.assert_array_equal(result.values, reference.values)
    assert counted == [0, 1, 3]  # the stale claim was redone; the live one was awaited


def _tmc_job(settings) -> str:
    upgrade(settings)
    train, test = make_synthetic(30, 40, seed=5, n_features=4, n_important=2)
    store = Storage(settings.storage_root)
    with session_scope(settings) as s:
        owner, _ = repo.create_api_key(s, name="w")
        ids = []
        for ds in (train, test):
            rec = repo.add_dataset(s, owner_id=owner.id, dataset=ds, name=ds.name,
                                   array_path=store.save_arrays(dataset_arrays(ds)))
            ids.append(rec.id)
        s.flush()
        params = {k: v for k, v in TMC.items() if k != "seed"}
        job = repo.create_job(s, owner_id=owner.id, train_dataset_id=ids[0],
                              test_dataset_id=ids[1], method="tmc_shapley", params=params,
                              fraction=0.25, seed=0, queue="cpu", max_attempts=3)
        return job.id


def test_job_reuses_a_helpers_chunk(settings, counted):
    from worker.run_job import run_job

    job_id = _tmc_job(settings)
    train, test = make_synthetic(30, 40, seed=5, n_features=4, n_important=2)
    valuation, _ = split_test(test, settings.holdout_fraction, seed=0)
    valuer = get_valuer("tmc_shapley", fraction=0.25, **TMC)  # as the job's fields give it
    key = sc.run_key(valuer, train, valuation)
    reference = valuer.fit(train, valuation)

    # a helper is turned away while the job is not running, then takes chunk 1 while it is
    assert sc.run_helper_chunk(job_id, 1, key, settings) == "skipped"
    with session_scope(settings) as s:
        s.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.RUNNING))
    root = Storage(settings.storage_root).path(f"shapley/{job_id}/{key}")
    root.mkdir(parents=True)
    assert sc.run_helper_chunk(job_id, 1, "f" * 20, settings) == "skipped"  # another run
    counted.clear()
    assert sc.run_helper_chunk(job_id, 1, key, settings) == "computed"
    assert counted == [1]
    with session_scope(settings) as s:
        s.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.QUEUED))

    counted.clear()
    assert run_job(job_id, settings=settings) == JobStatus.SUCCEEDED
    assert 1 not in counted  # the helper's chunk was reused, not recomputed
    with session_scope(settings) as s:
        rows = s.query(PointResult).filter_by(job_id=job_id).order_by(
            PointResult.point_index).all()
        summary = s.get(Job, job_id).summary
    np.testing.assert_allclose([r.score for r in rows], reference.values, atol=0)
    assert summary["extra"]["n_chunks"] == 4
    assert not root.exists()  # chunk files go once the values are merged
