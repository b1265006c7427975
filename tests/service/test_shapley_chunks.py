"""Distributed TMC-Shapley: chunks taken by helpers, stale and live claims, and a job whose
chunks were partly computed by a helper gives the sequential run's values."""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import update

from app.db import repo
from app.db.migrate import upgrade
from app.db.models import Job, JobStatus, PointResult
from app.db.session import session_scope
from app.jobs import shapley_chunks as sc
from app.storage import Storage, dataset_arrays
from hostcp_core import get_valuer, make_synthetic, split_test
from hostcp_core.valuers.tmc_shapley import TMCShapley

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


def test_a_chunk_in_parts_equals_the_chunk(data):
    train, test = data
    valuer = get_valuer("tmc_shapley", **TMC)
    utility = valuer.utility(train, test)
    ms = valuer.mean_score(utility, 0)
    whole = valuer._chunk(utility, ms, 2, 5, 0, None)
    parts = [valuer._chunk(utility, ms, 2, 2, 0, None, start=0),
             valuer._chunk(utility, ms, 2, 1, 0, None, start=2),
             valuer._chunk(utility, ms, 2, 2, 0, None, start=3)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert [[tuple(u) for u in units] for units in sc.chunk_units(valuer, 2)] == [
        [(c, 0, 2), (c, 2, 1)] for c in range(4)]


@pytest.mark.parametrize("part", [None, 1])
def test_helpers_and_claims_do_not_change_the_values(data, tmp_path, counted, part):
    train, test = data
    reference = get_valuer("tmc_shapley", **TMC).fit(train, test)
    counted.clear()
    valuer = get_valuer("tmc_shapley", **TMC)
    store = sc.ChunkStore(tmp_path / "run", stale_s=30)
    helped: list[int] = []
    units = sc.chunk_units(valuer, part)

    def helper(c: int) -> None:
        for u in units[c]:
            if store.try_claim(u):
                utility = valuer.utility(train, test)
                sc.compute_unit(valuer, utility, valuer.mean_score(utility, valuer.seed),
                                store, u)
                helped.append(c)

    threads: list[threading.Thread] = []

    def fan_out(indices) -> None:
        for c in indices:
            threads.append(threading.Thread(target=helper, args=(c,)))
            threads[-1].start()

    result = sc.coordinate(valuer, train, test, store, fan_out=fan_out, window=2, part=part)
    for t in threads:
        t.join()
    np.testing.assert_array_equal(result.values, reference.values)
    assert result.extra["n_chunks"] == 4 and result.extra["n_permutations"] == 12
    # every part computed once, by someone
    assert sorted(counted) == sorted(u.chunk for units_c in units for u in units_c)
    assert helped, "no helper took a chunk"


def test_stale_claims_are_taken_over_and_live_ones_awaited(data, tmp_path, counted):
    train, test = data
    valuer = get_valuer("tmc_shapley", **TMC)
    reference = get_valuer("tmc_shapley", **TMC).fit(train, test)
    store = sc.ChunkStore(tmp_path / "run", stale_s=5)
    # chunk 0: claimed by a worker that died long ago; chunk 2: claimed by a live one that
    # delivers a little later
    u0, u2 = sc.Unit(0, 0, 3), sc.Unit(2, 0, 3)
    assert store.try_claim(u0) and store.try_claim(u2)
    old = time.time() - 60
    os.utime(store.root / "chunk-00000-00000.claim", (old, old))
    assert not store.try_claim(u2)
    utility = valuer.utility(train, test)
    true_chunk2 = valuer._chunk(utility, valuer.mean_score(utility, 0), 2, 3, 0, None)
    counted.clear()

    def deliver() -> None:
        time.sleep(1.0)
        store.save(u2, true_chunk2)

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


def _reference(settings) -> tuple[str, np.ndarray]:
    """The run key and the in-process values of the job ``_tmc_job`` makes."""
    train, test = make_synthetic(30, 40, seed=5, n_features=4, n_important=2)
    valuation, _ = split_test(test, settings.holdout_fraction, seed=0)
    valuer = get_valuer("tmc_shapley", fraction=0.25, **TMC)  # as the job's fields give it
    return sc.run_key(valuer, train, valuation), valuer.fit(train, valuation).values


def _values(settings, job_id: str) -> np.ndarray:
    with session_scope(settings) as s:
        rows = s.query(PointResult).filter_by(job_id=job_id).order_by(
            PointResult.point_index).all()
    return np.array([r.score for r in rows])


def _status(settings, job_id: str) -> tuple[str, dict | None]:
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        return job.status, job.error


def test_job_reuses_a_helpers_chunk(settings, counted):
    from app.jobs.run_job import run_job

    job_id = _tmc_job(settings)
    key, reference = _reference(settings)

    # a helper is turned away while the job is not running, then takes chunk 1 while it is
    assert sc.run_helper_chunk(job_id, 1, key, settings=settings) == "skipped"
    with session_scope(settings) as s:
        s.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.RUNNING))
    root = sc._store(settings, job_id, key, None).root  # whole chunks, as the embedded runner
    root.mkdir(parents=True)
    assert sc.run_helper_chunk(job_id, 1, "f" * 20, settings=settings) == "skipped"  # not ours
    counted.clear()
    # no frontier yet: the message's chunk
    assert sc.run_helper_chunk(job_id, 1, key, settings=settings) == "computed 1"
    assert counted == [1]
    with session_scope(settings) as s:
        s.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.QUEUED))

    counted.clear()
    assert run_job(job_id, settings=settings) == JobStatus.SUCCEEDED
    assert 1 not in counted  # the helper's chunk was reused, not recomputed
    np.testing.assert_allclose(_values(settings, job_id), reference, atol=0)
    with session_scope(settings) as s:
        assert s.get(Job, job_id).summary["extra"]["n_chunks"] == 4
    assert not root.parent.exists()  # chunk files go once the job is terminal


def test_helper_keeps_taking_chunks_below_the_frontier_and_stops_when_merged(settings,
                                                                            counted):
    job_id = _tmc_job(settings)
    key, _ = _reference(settings)
    with session_scope(settings) as s:
        s.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.RUNNING))
    store = sc._store(settings, job_id, key, 2)  # parts of 2 (and 1) permutations
    store.set_frontier(2)
    taken = sc.Unit(0, 0, 2)
    assert store.try_claim(taken)  # a live claim by someone else
    counted.clear()
    assert sc.run_helper_chunk(job_id, 1, key, 2, settings=settings) == "computed 3"
    assert counted == [0, 1, 1]  # the lowest free parts; never past the frontier
    assert sorted(f.name for f in store.root.glob("*.npy")) == [
        "chunk-00000-00002.npy", "chunk-00001-00000.npy", "chunk-00001-00002.npy"]
    store.mark_merged()
    store.set_frontier(4)
    assert sc.run_helper_chunk(job_id, 3, key, 2, settings=settings) == "skipped"
    # a merged or dropped run abandons a helper's part at its next beat, and a helper never
    # recreates a dropped directory
    with pytest.raises(sc.Abandoned):
        store.heartbeat(taken, create=False)
    store.clear()
    with pytest.raises(sc.Abandoned):
        store.heartbeat(taken, create=False)
    assert not store.try_claim(sc.Unit(3, 0, 2), create=False)
    store.save(sc.Unit(3, 0, 2), np.zeros((2, 30)), create=False)
    assert not store.root.exists()


def _interrupted_after_two_chunks(settings, job_id: str, key: str):
    """Run the job until chunks 0 and 1 are written, then stop the worker (the job goes back
    to the queue, as when a runner shuts down): the retry must find the chunks."""
    from app.jobs.run_job import run_job

    root = sc._store(settings, job_id, key, None).root
    status = run_job(job_id, settings=settings,
                     should_stop=lambda: (root / "chunk-00001-00000.npy").exists())
    assert status == JobStatus.QUEUED
    assert sorted(p.name for p in root.glob("chunk-*.npy")) == ["chunk-00000-00000.npy",
                                                                 "chunk-00001-00000.npy"]
    return root


def test_retry_keeps_the_chunks_and_success_drops_them(settings, counted):
    from app.jobs.run_job import run_job

    job_id = _tmc_job(settings)
    key, reference = _reference(settings)
    root = _interrupted_after_two_chunks(settings, job_id, key)
    counted.clear()
    assert run_job(job_id, settings=settings) == JobStatus.SUCCEEDED
    assert counted == [2, 3]  # 0 and 1 reused
    np.testing.assert_allclose(_values(settings, job_id), reference, atol=0)
    assert not root.parent.exists()


@pytest.mark.parametrize("end", ["error", "cancel", "max_attempts", "canceled_queued"])
def test_chunk_files_go_when_the_job_ends_for_good(settings, monkeypatch, end):
    """Whatever ends a TMC job (an error, a cancel while it runs, the claim path closing a job
    with no attempts left, a cancel while it waits for a retry), its chunk files go."""
    from app.core import problems
    from app.db.types import utcnow
    from app.jobs.run_job import run_job

    job_id = _tmc_job(settings)
    key, _ = _reference(settings)
    root = Storage(settings.storage_root).path(f"shapley/{job_id}")
    if end in ("error", "cancel"):
        original = TMCShapley._chunk
        seen: list[list[str]] = []

        def chunk(self, utility, mean_score, chunk_index, *args, **kw):
            if chunk_index == 2:
                seen.append(sorted(p.name for p in root.glob("*/chunk-*.npy")))
                if end == "error":
                    raise RuntimeError("boom")
                with session_scope(settings) as s:
                    s.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
            return original(self, utility, mean_score, chunk_index, *args, **kw)

        monkeypatch.setattr(TMCShapley, "_chunk", chunk)
        expected = JobStatus.FAILED if end == "error" else JobStatus.CANCELED
        assert run_job(job_id, settings=settings) == expected
        # there were files to drop
        assert seen == [["chunk-00000-00000.npy", "chunk-00001-00000.npy"]]
        slug = problems.JOB_FAILED.slug if end == "error" else problems.JOB_CANCELED.slug
    else:
        _interrupted_after_two_chunks(settings, job_id, key)
        if end == "max_attempts":  # its last worker died: stale lease, no attempts left
            with session_scope(settings) as s:
                s.execute(update(Job).where(Job.id == job_id).values(
                    status=JobStatus.RUNNING, attempts=3, lease_owner="dead",
                    lease_expires_at=utcnow() - timedelta(seconds=5)))
            assert run_job(job_id, settings=settings) == "skipped"
            slug = problems.MAX_ATTEMPTS.slug
        else:  # canceled through the API while queued: no worker runs it again
            other = sc._job_root(settings, "0" * 8)  # files of a job that no longer exists
            other.mkdir(parents=True)
            assert sc.sweep(settings) == ["0" * 8] and root.exists()  # a retry's are kept
            with session_scope(settings) as s:
                repo.request_cancel(s, job=s.get(Job, job_id))
            assert root.exists()
            # a late helper message for it tidies up, and so does the next TMC job's start
            assert sc.run_helper_chunk(job_id, 0, key, settings=settings) == "skipped"
            assert not root.exists()
            (root / key).mkdir(parents=True)
            assert sc.sweep(settings) == [job_id]
            slug = None  # the API cancels a queued job with no error object
    status, error = _status(settings, job_id)
    assert status in JobStatus.TERMINAL
    assert (error is None if slug is None else error["type"].endswith("/" + slug)), error
    assert not root.exists()
