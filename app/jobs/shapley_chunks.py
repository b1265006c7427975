"""Distributed TMC Data Shapley: a job's permutation chunks run on any number of workers.

TMC-Shapley's chunks are independent and deterministic in (seed, chunk index)
(``TMCShapley.run_chunk``), and so is every run of permutations inside a chunk, so whoever
computes a part of a chunk computes the same numbers. The job's own ``run_job`` is the
coordinator: it asks helpers (Celery ``hostcp.shapley_chunk`` tasks) to take parts of chunks
below a moving frontier (a few chunks ahead of the merge), computes any part nobody has claimed
itself, and merges finished chunks in index order, stopping at the first prefix that meets the
convergence test, exactly where a sequential run stops. So the values do not depend on how many
workers took part. Parts are smaller than chunks (``check_every`` permutations) so that the
workers finish together: the last chunk does not leave one worker idle while another computes it.

Parts and claims are files in the shared store, under a key that fingerprints the data, the
method's parameters and the part size (a helper that loaded different data writes where nobody
reads): ``chunk-C-S.npy`` (chunk C from its permutation S; written atomically),
``chunk-C-S.claim`` (its mtime is the claimer's heartbeat), ``frontier`` (helpers may take
chunks below it) and ``merged`` (the run is merged: helpers stop). A helper task keeps taking
the lowest unclaimed part below the frontier until there is none, so a helper never idles
waiting for the next message while there is work.

Worker loss: a helper that dies leaves a claim that goes stale and the coordinator (or another
helper) computes that part; a coordinator that dies loses its job lease, the reaper reruns the
job, and the new coordinator reuses every part already written. Two workers computing one part
is harmless (same bytes). The files live until the job is terminal (succeeded, failed, canceled,
timed out: ``drop_if_finished``, called by ``run_job`` whoever ended the job, and ``sweep``), so
a retry reuses them. The embedded runner has no helpers: it computes whole chunks in sequence.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from sqlalchemy import select

from app.core.config import get_settings
from app.db.models import DatasetRecord, Job, JobStatus
from app.db.session import session_scope
from app.jobs import dispatch
from app.jobs.data import load_job_data
from app.jobs.methods import build_valuer
from app.storage import Storage
from hostcp_core.progress import ProgressCallback, report

log = logging.getLogger(__name__)

STAGE = "tmc_shapley:permutations"


class Abandoned(Exception):
    """A helper's part is no longer wanted: the run was merged, or its job ended."""


class Unit(NamedTuple):
    """Permutations ``start`` .. ``start + size`` of chunk ``chunk``: what one claim covers."""

    chunk: int
    start: int
    size: int

    @property
    def name(self) -> str:
        return f"chunk-{self.chunk:05d}-{self.start:05d}"


class ChunkStore:
    """Results and claims of one run's parts, as files under ``root``."""

    def __init__(self, root: Path, stale_s: float, label: str | None = None):
        self.root = Path(root)
        self.stale_s = stale_s
        self.label = label or self.root.name

    def _file(self, u: Unit, suffix: str) -> Path:
        return self.root / f"{u.name}{suffix}"

    def has(self, u: Unit) -> bool:
        return self._file(u, ".npy").exists()

    def result(self, u: Unit) -> np.ndarray | None:
        path = self._file(u, ".npy")
        if not path.exists():
            return None
        return np.load(path, allow_pickle=False)

    def save(self, u: Unit, marginals: np.ndarray, *, create: bool = True) -> None:
        """Write a part; ``create=False`` (helpers) writes nothing once the run's directory
        was cleared, so a late helper leaves no files behind a finished job."""
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            return
        tmp = self._file(u, f".{os.getpid()}.part.npy")
        try:
            np.save(tmp, marginals)
            os.replace(tmp, self._file(u, ".npy"))
        except FileNotFoundError:
            if create:
                raise  # the coordinator's own directory vanished: that is a bug, not a race

    def try_claim(self, u: Unit, *, create: bool = True) -> bool:
        """True when the caller should compute part ``u``: no result yet, and no live claim
        (a claim whose heartbeat is older than ``stale_s`` belongs to a dead worker).
        ``create=False`` (helpers): never recreate a cleared directory."""
        if self.has(u):
            return False
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif self.merged():
            return False
        claim = self._file(u, ".claim")
        try:
            os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            try:
                age = time.time() - claim.stat().st_mtime
            except FileNotFoundError:
                return self.try_claim(u, create=create)
            if age <= self.stale_s:
                return False
            try:  # take it over; a race with another taker only duplicates work
                self.heartbeat(u, create=create)
            except Abandoned:
                return False
            return True
        except FileNotFoundError:  # the directory is gone: the job ended
            if create:
                raise
            return False

    def heartbeat(self, u: Unit, *, create: bool = True) -> None:
        """Refresh a claim. A helper's (``create=False``) raises Abandoned once the run is
        merged or its files were dropped: nobody wants the part any more."""
        claim = self._file(u, ".claim")
        if create:
            claim.touch()
            return
        if self.merged():
            raise Abandoned(f"{self.label}: merged")
        try:
            os.utime(claim)
        except FileNotFoundError:
            raise Abandoned(f"{self.label}: files dropped") from None

    def set_frontier(self, upto: int) -> None:
        """Helpers may take parts of chunks below ``upto``."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"frontier.{os.getpid()}.part"
        tmp.write_text(str(int(upto)))
        os.replace(tmp, self.root / "frontier")

    def frontier(self) -> int:
        try:
            return int((self.root / "frontier").read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def mark_merged(self) -> None:
        (self.root / "merged").touch()

    def merged(self) -> bool:
        return (self.root / "merged").exists()

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def chunk_sizes(valuer) -> list[int]:
    """Permutations per chunk, as the sequential run takes them."""
    total, size = valuer.max_permutations, valuer.check_every
    return [min(size, total - c * size) for c in range(math.ceil(total / size))]


def chunk_units(valuer, part: int | None = None) -> list[list[Unit]]:
    """Each chunk's parts of (at most) ``part`` permutations; None: whole chunks."""
    out = []
    for c, size in enumerate(chunk_sizes(valuer)):
        step = part or size
        out.append([Unit(c, s, min(step, size - s)) for s in range(0, size, step)])
    return out


def run_key(valuer, train, test) -> str:
    """Fingerprint of the data and the parameters: parts are reused only for the same run."""
    h = hashlib.sha256(json.dumps(valuer.get_params(), sort_keys=True, default=str).encode())
    for arr in (train.X, train.y, test.X, test.y):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:20]


def compute_unit(valuer, utility, mean_score: float, store: ChunkStore, u: Unit,
                 progress: ProgressCallback | None = None, *,
                 create: bool = True) -> np.ndarray:
    """Compute one claimed part, beating its claim after every permutation, and save it.
    Logs which process computed it (the evidence of who did the work)."""
    def beat(event) -> None:
        store.heartbeat(u, create=create)
        if progress is not None:
            progress(event)

    t = time.perf_counter()
    marginals = valuer._chunk(utility, mean_score, u.chunk, u.size, valuer.seed, beat,
                              start=u.start)
    # logged before it is saved: a part in the store always has its line in some log
    log.info("%s: chunk %d [%d:%d] computed in %.2f s by pid %d", store.label, u.chunk,
             u.start, u.start + u.size, time.perf_counter() - t, os.getpid())
    store.save(u, marginals, create=create)
    return marginals


def coordinate(valuer, train, test, store: ChunkStore, *,
               fan_out: Callable[[Iterable[int]], None] | None = None, window: int = 2,
               part: int | None = None, progress: ProgressCallback | None = None,
               poll_s: float = 0.05):
    """Run a TMCShapley valuer's chunks with helpers; the same ValuationResult as its ``fit``.

    ``fan_out(indices)`` asks helpers to take parts of those chunks (None: no helpers);
    ``window`` is how many chunks past the merge may be in flight at once (about the number of
    workers, or more: a larger window idles less but may compute more past convergence);
    ``part``: permutations per claim (None: whole chunks).
    """
    from hostcp_core import check_compatible, validate_train
    from hostcp_core.result import ValuationResult
    from hostcp_core.valuers.tmc_shapley import merge_chunks

    validate_train(train)
    check_compatible(train, test)
    t0 = time.perf_counter()
    units = chunk_units(valuer, part)
    total = valuer.max_permutations
    asked = 0

    def ask(upto: int) -> None:
        nonlocal asked
        upto = min(upto, len(units))
        if fan_out is None or upto <= asked:
            return
        store.set_frontier(upto)  # before the messages: a helper reads it on arrival
        fan_out(range(asked, upto))
        asked = upto

    # Ask first: helpers load their data while this process fits the full-data model.
    ask(window)
    utility = valuer.utility(train, test)
    mean_score = valuer.mean_score(utility, valuer.seed)

    chunks: list[np.ndarray] = []
    done, error, c = 0, 1.0, 0
    while c < len(units):
        if not all(store.has(u) for u in units[c]):
            # compute the first part in the window that nobody is working on
            target = next((u for j in range(c, min(c + window, len(units))) for u in units[j]
                           if store.try_claim(u)), None)
            if target is None:  # all taken by live helpers: wait (and let cancel through)
                report(progress, STAGE, done, total)
                time.sleep(poll_s)
                continue
            compute_unit(valuer, utility, mean_score, store, target,
                         lambda e, base=done: report(progress, STAGE, base + e.step, total))
            continue
        chunks.append(np.concatenate([store.result(u) for u in units[c]]))
        done += len(chunks[-1])
        c += 1
        report(progress, STAGE, done, total)
        _, error = merge_chunks(chunks)
        if error < valuer.err:
            break
        ask(c + window)
    store.mark_merged()  # helpers stop (a part in progress is abandoned at its next beat)
    values, error = merge_chunks(chunks)
    extra = {"n_permutations": done, "n_chunks": c, "convergence_error": error,
             "converged": bool(error < valuer.err), "mean_score": mean_score,
             "random_score": utility.random_score, "distributed": fan_out is not None}
    result = ValuationResult.from_values(values, valuer.fraction, valuer.name, extra=extra)
    result.timings["total_s"] = time.perf_counter() - t0
    result.params = valuer.get_params()
    return result


# --------------------------------------------------------------------------- in the service

WINDOW_SERVER = 4  # chunks past the merge that helpers may take; idle ones skip taken parts
PARTS_PER_CHUNK = 8  # claims per chunk: the workers' finishing times differ by < 1/8 chunk
# A helper process keeps the last run's loaded data, utility and mean score: its next part of
# the same run starts at once.
_HELPER_CACHE: dict[str, tuple] = {}


def part_size(valuer) -> int:
    """Permutations per claim in server mode."""
    return max(1, math.ceil(valuer.check_every / PARTS_PER_CHUNK))


def _job_root(settings, job_id: str) -> Path:
    return Storage(settings.storage_root).path(f"shapley/{job_id}")


def _store(settings, job_id: str, key: str, part: int | None) -> ChunkStore:
    # the part size names the directory too: parts of different sizes never mix
    return ChunkStore(_job_root(settings, job_id) / f"{key}-p{part or 0}",
                      stale_s=settings.lease_s, label=f"job {job_id}")


def drop_if_finished(settings, job_id: str) -> bool:
    """Remove a job's chunk files once it is terminal (or gone); True when removed. Costs one
    stat for jobs without chunk files. Best effort: a database error leaves them to ``sweep``."""
    try:
        root = _job_root(settings, job_id)
    except ValueError:  # not a job id the store would have used
        return False
    if not root.exists():
        return False
    try:
        with session_scope(settings) as s:
            status = s.scalar(select(Job.status).where(Job.id == job_id))
    except Exception as exc:
        log.warning("job %s: could not check whether its chunk files can go: %s", job_id,
                    type(exc).__name__)
        return False
    if status is not None and status not in JobStatus.TERMINAL:
        return False  # queued for a retry or running: the next coordinator reuses them
    shutil.rmtree(root, ignore_errors=True)
    return True


def sweep(settings) -> list[str]:
    """Remove the chunk files of every terminal (or deleted) job, e.g. one canceled through the
    API while it was queued for a retry; returns their job ids. Run as each TMC job starts."""
    base = Storage(settings.storage_root).path("shapley")
    if not base.is_dir():
        return []
    ids = [p.name for p in base.iterdir() if p.is_dir()]
    if not ids:
        return []
    with session_scope(settings) as s:
        live = set(s.scalars(select(Job.id).where(Job.id.in_(ids),
                                                  Job.status.notin_(JobStatus.TERMINAL))))
    gone = [i for i in ids if i not in live]
    for job_id in gone:
        shutil.rmtree(base / job_id, ignore_errors=True)
    return gone


def run_job_chunks(job_id: str, settings, valuer, train, test,
                   progress: ProgressCallback | None):
    """``run_job``'s TMC-Shapley path: coordinate the job's chunks (with Celery helpers in
    server mode, alone in embedded mode). The files stay until the job is terminal."""
    if sweep(settings):
        log.info("removed chunk files of finished jobs")
    key = run_key(valuer, train, test)
    part = None if settings.embedded else part_size(valuer)
    store = _store(settings, job_id, key, part)
    store.root.mkdir(parents=True, exist_ok=True)
    fan_out = None
    if not settings.embedded:
        with session_scope(settings) as s:
            queue = s.get(Job, job_id).queue

        def fan_out(indices: Iterable[int]) -> None:
            for c in indices:  # a lost message only means someone else computes it
                dispatch.send(dispatch.SHAPLEY_CHUNK, [job_id, int(c), key, part], queue=queue)

    return coordinate(valuer, train, test, store, fan_out=fan_out,
                      window=WINDOW_SERVER if fan_out else 1, part=part, progress=progress)


def run_helper_chunk(job_id: str, chunk_index: int, key: str, part: int | None = None,
                     settings=None) -> str:
    """A helper's turn (the ``hostcp.shapley_chunk`` task): compute the lowest unclaimed part
    of a running TMC-Shapley job below the frontier (chunk ``chunk_index`` when there is no
    frontier), and the next, until there is none; returns what it did."""
    from hostcp_core import DataError, split_test

    settings = settings or get_settings()
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        status = None if job is None else job.status
        if job is None or status != JobStatus.RUNNING or job.method != "tmc_shapley":
            job = None
        else:
            train_rec = s.get(DatasetRecord, job.train_dataset_id)
            test_rec = s.get(DatasetRecord, job.test_dataset_id)
            params, fraction, seed = dict(job.params or {}), job.fraction, job.seed
    if job is None:
        if status is None or status in JobStatus.TERMINAL:  # a late message: tidy up
            drop_if_finished(settings, job_id)
        return "skipped"
    store = _store(settings, job_id, key, part)
    if not store.root.is_dir() or store.merged():
        return "skipped"
    prepared = _HELPER_CACHE.get(key)
    if prepared is None:
        train, test = load_job_data(settings, train_rec, test_rec)
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
    units = chunk_units(valuer, part)
    computed = 0
    while True:
        # the lowest free part below the frontier: the merge needs the low chunks first
        chunks = range(min(store.frontier(), len(units))) or [chunk_index]
        target = next((u for j in chunks if 0 <= j < len(units) for u in units[j]
                       if store.try_claim(u, create=False)), None)
        if target is None:
            break
        try:
            compute_unit(valuer, utility, mean_score, store, target, create=False)
        except Abandoned as exc:
            log.info("%s", exc)
            break
        computed += 1
    return f"computed {computed}" if computed else "skipped"
