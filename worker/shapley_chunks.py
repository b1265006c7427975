"""Distributed TMC Data Shapley: a job's permutation chunks run on any number of workers.

TMC-Shapley's chunks are independent and deterministic in (seed, chunk index)
(``TMCShapley.run_chunk``), so whoever computes a chunk computes the same numbers. The job's own
``run_job`` is the coordinator: it asks helpers (Celery ``hostcp.shapley_chunk`` tasks) to take
the next few chunks, computes any chunk nobody has claimed itself, and merges finished chunks
in index order, stopping at the first prefix that meets the convergence test, exactly where a
sequential run stops. So the values do not depend on how many workers took part.

Chunks and claims are files in the shared store, under a key that fingerprints the data and
the method's parameters (a helper that loaded different data writes where nobody reads):
``chunk-N.npy`` (written atomically) and ``chunk-N.claim`` (its mtime is the claimer's
heartbeat). Worker loss: a helper that dies leaves a claim that goes stale and the coordinator
computes that chunk itself; a coordinator that dies loses its job lease, the reaper reruns the
job, and the new coordinator reuses every chunk already written. Two workers computing one
chunk is harmless (same bytes). The embedded runner has no helpers: it computes every chunk in
sequence.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from hostcp_core.progress import ProgressCallback, report

STAGE = "tmc_shapley:permutations"


class ChunkStore:
    """Chunk results and claims of one run, as files under ``root``."""

    def __init__(self, root: Path, stale_s: float):
        self.root = Path(root)
        self.stale_s = stale_s

    def _file(self, c: int, suffix: str) -> Path:
        return self.root / f"chunk-{c:05d}{suffix}"

    def result(self, c: int) -> np.ndarray | None:
        path = self._file(c, ".npy")
        if not path.exists():
            return None
        return np.load(path, allow_pickle=False)

    def save(self, c: int, marginals: np.ndarray, *, create: bool = True) -> None:
        """Write a chunk; ``create=False`` (helpers) writes nothing once the run's directory
        was cleared, so a late helper leaves no files behind a finished job."""
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            return
        tmp = self._file(c, f".{os.getpid()}.part.npy")
        np.save(tmp, marginals)
        os.replace(tmp, self._file(c, ".npy"))

    def try_claim(self, c: int) -> bool:
        """True when the caller should compute chunk ``c``: no result yet, and no live claim
        (a claim whose heartbeat is older than ``stale_s`` belongs to a dead worker)."""
        if self._file(c, ".npy").exists():
            return False
        self.root.mkdir(parents=True, exist_ok=True)
        claim = self._file(c, ".claim")
        try:
            os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            try:
                age = time.time() - claim.stat().st_mtime
            except FileNotFoundError:
                return self.try_claim(c)
            if age <= self.stale_s:
                return False
            self.heartbeat(c)  # take it over; a race with another taker only duplicates work
            return True

    def heartbeat(self, c: int) -> None:
        claim = self._file(c, ".claim")
        claim.touch()

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def chunk_sizes(valuer) -> list[int]:
    """Permutations per chunk, as the sequential run takes them."""
    total, size = valuer.max_permutations, valuer.check_every
    return [min(size, total - c * size) for c in range(math.ceil(total / size))]


def run_key(valuer, train, test) -> str:
    """Fingerprint of the data and the parameters: chunks are reused only for the same run."""
    h = hashlib.sha256(json.dumps(valuer.get_params(), sort_keys=True, default=str).encode())
    for arr in (train.X, train.y, test.X, test.y):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:20]


def compute_chunk(valuer, utility, mean_score: float, store: ChunkStore, c: int,
                  size: int, progress: ProgressCallback | None = None, *,
                  create: bool = True) -> np.ndarray:
    """Compute one claimed chunk, beating its claim after every permutation, and save it."""
    def beat(event) -> None:
        store.heartbeat(c)
        if progress is not None:
            progress(event)

    marginals = valuer._chunk(utility, mean_score, c, size, valuer.seed, beat)
    store.save(c, marginals, create=create)
    return marginals


def coordinate(valuer, train, test, store: ChunkStore, *,
               fan_out: Callable[[Iterable[int]], None] | None = None, window: int = 2,
               progress: ProgressCallback | None = None, poll_s: float = 0.2):
    """Run a TMCShapley valuer's chunks with helpers; the same ValuationResult as its ``fit``.

    ``fan_out(indices)`` asks helpers to take those chunks (None: no helpers); ``window`` is
    how many chunks may be in flight at once (about the number of workers).
    """
    from hostcp_core import check_compatible, validate_train
    from hostcp_core.result import ValuationResult
    from hostcp_core.valuers.tmc_shapley import merge_chunks

    validate_train(train)
    check_compatible(train, test)
    t0 = time.perf_counter()
    utility = valuer.utility(train, test)
    mean_score = valuer.mean_score(utility, valuer.seed)
    sizes = chunk_sizes(valuer)
    total = sum(sizes)
    asked: set[int] = set()

    def ask(upto: int) -> None:
        new = [j for j in range(upto) if j < len(sizes) and j not in asked]
        if fan_out is not None and new:
            fan_out(new)
        asked.update(new)

    chunks: list[np.ndarray] = []
    done, error, c = 0, 1.0, 0
    ask(window)
    while c < len(sizes):
        marginals = store.result(c)
        if marginals is None:
            # compute the first chunk in the window that nobody is working on
            target = next((j for j in range(c, min(c + window, len(sizes)))
                           if store.try_claim(j)), None)
            if target is None:  # all taken by live helpers: wait (and let cancel through)
                report(progress, STAGE, done, total)
                time.sleep(poll_s)
                continue
            compute_chunk(valuer, utility, mean_score, store, target, sizes[target],
                          lambda e, base=done: report(progress, STAGE, base + e.step, total))
            continue
        chunks.append(marginals)
        done += sizes[c]
        c += 1
        report(progress, STAGE, done, total)
        _, error = merge_chunks(chunks)
        if error < valuer.err:
            break
        ask(c + window)
    values, error = merge_chunks(chunks)
    extra = {"n_permutations": done, "n_chunks": c, "convergence_error": error,
             "converged": bool(error < valuer.err), "mean_score": mean_score,
             "random_score": utility.random_score, "distributed": fan_out is not None}
    result = ValuationResult.from_values(values, valuer.fraction, valuer.name, extra=extra)
    result.timings["total_s"] = time.perf_counter() - t0
    result.params = valuer.get_params()
    return result


# --------------------------------------------------------------------------- in the service

WINDOW_SERVER = 4  # chunks asked of helpers ahead of the merge; idle ones skip taken chunks
# A helper process keeps the last run's loaded data, utility and mean score: its next chunk of
# the same run (same key: same data and parameters) starts at once.
_HELPER_CACHE: dict[str, tuple] = {}


def _store(settings, job_id: str, key: str) -> ChunkStore:
    from app.storage import Storage

    return ChunkStore(Storage(settings.storage_root).path(f"shapley/{job_id}/{key}"),
                      stale_s=settings.lease_s)


def run_job_chunks(job_id: str, settings, valuer, train, test,
                   progress: ProgressCallback | None):
    """``run_job``'s TMC-Shapley path: coordinate the job's chunks (with Celery helpers in
    server mode, alone in embedded mode), then drop the chunk files."""
    key = run_key(valuer, train, test)
    store = _store(settings, job_id, key)
    store.root.mkdir(parents=True, exist_ok=True)
    fan_out = None
    if not settings.embedded:
        from app.db.models import Job
        from app.db.session import session_scope
        from worker.celery_app import get_celery

        with session_scope(settings) as s:
            queue = s.get(Job, job_id).queue

        def fan_out(indices: Iterable[int]) -> None:
            celery = get_celery(settings)
            for c in indices:  # a lost message only means the coordinator computes it
                celery.send_task("hostcp.shapley_chunk", args=[job_id, int(c), key],
                                 queue=queue, ignore_result=True)

    result = coordinate(valuer, train, test, store, fan_out=fan_out,
                        window=WINDOW_SERVER if fan_out else 1, progress=progress)
    store.clear()
    return result


def run_helper_chunk(job_id: str, chunk_index: int, key: str, settings=None) -> str:
    """A helper's turn (the ``hostcp.shapley_chunk`` task): compute one chunk of a running
    TMC-Shapley job if nobody has; returns what it did."""
    from app.core.config import get_settings
    from app.db.models import DatasetRecord, Job, JobStatus
    from app.db.session import session_scope
    from hostcp_core import DataError, split_test
    from worker.run_job import _load
    from worker.valuation import build_valuer

    settings = settings or get_settings()
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        if job is None or job.status != JobStatus.RUNNING or job.method != "tmc_shapley":
            return "skipped"
        train_rec = s.get(DatasetRecord, job.train_dataset_id)
        test_rec = s.get(DatasetRecord, job.test_dataset_id)
        params, fraction, seed = dict(job.params or {}), job.fraction, job.seed
    store = _store(settings, job_id, key)
    if not store.root.is_dir() or store.result(chunk_index) is not None:
        return "skipped"
    prepared = _HELPER_CACHE.get(key)
    if prepared is None:
        train, test = _load(settings, train_rec, test_rec)
        try:  # the same valuation part as run_job takes
            test, _ = split_test(test, settings.holdout_fraction, seed=seed)
        except DataError:
            pass
        valuer = build_valuer("tmc_shapley", fraction=fraction, seed=seed, params=params)
        if run_key(valuer, train, test) != key:
            return "skipped: different data"  # never write where the coordinator reads
        utility = valuer.utility(train, test)
        prepared = (valuer, utility, valuer.mean_score(utility, seed))
        _HELPER_CACHE.clear()  # one run at a time per process: keep memory flat
        _HELPER_CACHE[key] = prepared
    valuer, utility, mean_score = prepared
    sizes = chunk_sizes(valuer)
    if not 0 <= chunk_index < len(sizes) or not store.try_claim(chunk_index):
        return "skipped"
    compute_chunk(valuer, utility, mean_score, store, chunk_index, sizes[chunk_index],
                  create=False)
    return "computed"
