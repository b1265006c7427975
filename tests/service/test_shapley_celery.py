"""Distributed TMC-Shapley on the real servers: Postgres, Redis and two Celery worker processes
(`python -m app.cli worker`, one task at a time each). One job is split so that both processes
compute chunks, proven by each process's own log lines ("chunk N computed ... by pid P"), and
its values equal ``TMCShapley.fit`` run here with the same seed. A second job loses its helper
worker to SIGKILL mid-run and still gives the same values (the dead helper's claim goes stale
and the coordinator computes that chunk)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import test_postgres_celery as pgc

from app.db import repo
from app.db.models import Job, JobStatus, PointResult
from app.db.session import session_scope
from app.jobs import dispatch
from app.jobs import shapley_chunks as sc
from app.storage import Storage, dataset_arrays
from hostcp_core import make_synthetic, split_test
from hostcp_core.valuers.tmc_shapley import TMCShapley
from worker.celery_app import CeleryTransport

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]
# the fresh Postgres database, Redis and settings of the single-worker test
redis_url, server_settings = pgc.redis_url, pgc.server_settings  # pg_database: conftest

# 12 chunks of 2 permutations of 80 points: a few seconds of work, enough chunks for both
# processes to take some, whatever the timing
N, PARAMS = 80, {"max_permutations": 24, "check_every": 2, "err": 1e-12, "n_bootstrap": 10}
LEASE_S = 4  # a dead helper's claim is taken over after this


class Workers:
    def __init__(self, settings, log_dir: Path, count: int = 2) -> None:
        s = settings
        self.env = {**os.environ, "HOSTCP_ENV": "test", "HOSTCP_DATA_DIR": str(s.data_dir),
                    "HOSTCP_DATABASE_URL": s.database_url, "HOSTCP_BROKER_URL": s.broker_url,
                    "HOSTCP_QUEUE_CPU": s.queue_cpu, "HOSTCP_QUEUE_GPU": s.queue_gpu,
                    "HOSTCP_SECRET_KEY": s.secret_key, "HOSTCP_PROGRESS_INTERVAL_S": "0.2",
                    "HOSTCP_LEASE_S": str(LEASE_S), "HOSTCP_CURVE_FRACTIONS": "[0.5, 1.0]",
                    "HOSTCP_CURVE_EPOCHS": "2", "OMP_NUM_THREADS": "1"}
        self.logs = [log_dir / f"worker-{i}.log" for i in range(count)]
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        for log in self.logs:
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker", "--queue", "cpu", "--loglevel",
                 "INFO"], env=self.env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                start_new_session=True))

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not all(" ready." in self.text(i) for i in range(len(self.logs))):
            assert time.monotonic() < deadline and all(p.poll() is None for p in self.procs), \
                "workers did not start:\n" + "\n".join(self.text(i)[-2000:]
                                                        for i in range(len(self.logs)))
            time.sleep(0.2)

    def text(self, i: int) -> str:
        return self.logs[i].read_text(errors="replace") if self.logs[i].exists() else ""

    def chunks(self, i: int, job_id: str) -> list[tuple[tuple[int, int], int]]:
        """((chunk, first permutation), pid) of every part of a chunk of ``job_id`` that worker
        ``i`` computed."""
        pattern = (rf"job {re.escape(job_id)}: chunk (\d+) \[(\d+):\d+\] computed in [\d.]+ s "
                   rf"by pid (\d+)")
        return [((int(c), int(a)), int(p)) for c, a, p in re.findall(pattern, self.text(i))]

    def coordinator(self, job_id: str) -> int:
        ran = [i for i in range(len(self.logs)) if f"hostcp.run_job[{job_id}]" in self.text(i)]
        assert len(ran) == 1, ran
        return ran[0]

    def kill(self, i: int) -> None:
        os.killpg(self.procs[i].pid, signal.SIGKILL)
        self.procs[i].wait(10)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # warm shutdown
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


@pytest.fixture
def workers(server_settings, tmp_path):
    w = Workers(server_settings, tmp_path)
    w.start()
    yield w
    w.stop()


def _submit(settings, owner_id: int, ids: tuple[str, str]) -> str:
    with session_scope(settings) as s:
        job = repo.create_job(s, owner_id=owner_id, train_dataset_id=ids[0],
                              test_dataset_id=ids[1], method="tmc_shapley", params=PARAMS,
                              fraction=0.2, seed=3, queue=settings.queue_cpu, max_attempts=3)
        job_id = job.id
    dispatch.install(CeleryTransport(settings))  # this process sends as the API would
    assert dispatch.enqueue(job_id, settings.queue_cpu)
    return job_id


def _wait(settings, job_id: str, timeout: float = 90) -> np.ndarray:
    deadline = time.monotonic() + timeout
    while True:
        with session_scope(settings) as s:
            job = s.get(Job, job_id)
            status, error = job.status, job.error
        if status in JobStatus.TERMINAL:
            break
        assert time.monotonic() < deadline, f"job {job_id} still {status}"
        time.sleep(0.1)
    assert status == JobStatus.SUCCEEDED, error
    with session_scope(settings) as s:
        return np.array([p.score for p in s.query(PointResult).filter_by(job_id=job_id)
                         .order_by(PointResult.point_index)])


def test_two_workers_share_a_tmc_job_and_survive_losing_one(server_settings, workers):
    s = server_settings
    train, test = make_synthetic(N, N, seed=2)
    store = Storage(s.storage_root)
    with session_scope(s) as sess:
        owner, _ = repo.create_api_key(sess, name="tmc")
        ids = tuple(repo.add_dataset(sess, owner_id=owner.id, dataset=ds, name=ds.name,
                                     array_path=store.save_arrays(dataset_arrays(ds))).id
                    for ds in (train, test))
        owner_id = owner.id
    # the reference, in this process, while the workers start: the job values on the part of
    # the test set that run_job keeps for valuation
    valuation, _ = split_test(test, s.holdout_fraction, seed=3)
    reference = TMCShapley(fraction=0.2, seed=3, **PARAMS).fit(train, valuation).values
    # the parts the chunks are claimed in: (chunk, first permutation)
    valuer = TMCShapley(**PARAMS)
    parts = {(u.chunk, u.start) for c in sc.chunk_units(valuer, sc.part_size(valuer)) for u in c}
    assert len(parts) > len(sc.chunk_sizes(valuer))  # smaller than chunks
    workers.wait_ready()

    # 1. both processes compute chunks; the values are the sequential run's
    job_id = _submit(s, owner_id, ids)
    values = _wait(s, job_id)
    np.testing.assert_allclose(values, reference, rtol=0, atol=1e-12)
    coordinator = workers.coordinator(job_id)
    helper = 1 - coordinator
    by_coordinator, by_helper = workers.chunks(coordinator, job_id), workers.chunks(helper, job_id)
    assert by_coordinator and by_helper, (by_coordinator, by_helper)
    # two different processes, and together they computed every chunk
    pids = {p for _, p in by_coordinator} | {p for _, p in by_helper}
    assert len(pids) == 2 and {p for _, p in by_coordinator}.isdisjoint(p for _, p in by_helper)
    assert {u for u, _ in by_coordinator + by_helper} == parts
    assert not Storage(s.storage_root).path(f"shapley/{job_id}").exists()

    # 2. SIGKILL the helper's worker once it has computed a chunk of the next job (it is then
    # on its next chunk): the coordinator takes over what it held, and the values do not change
    job_id = _submit(s, owner_id, ids)
    deadline = time.monotonic() + 60
    helper = None
    while helper is None:
        received = [i for i in (0, 1) if f"hostcp.run_job[{job_id}]" in workers.text(i)]
        if received and workers.chunks(1 - received[0], job_id):
            helper = 1 - received[0]
        assert time.monotonic() < deadline, "the helper computed no chunk of the second job"
        time.sleep(0.02)
    workers.kill(helper)
    killed_at = time.monotonic()
    values = _wait(s, job_id)
    np.testing.assert_allclose(values, reference, rtol=0, atol=1e-12)
    coordinator = 1 - helper
    assert workers.procs[coordinator].poll() is None
    done = {u for u, _ in workers.chunks(coordinator, job_id) + workers.chunks(helper, job_id)}
    assert done == parts
    print(f"helper killed {time.monotonic() - killed_at:.1f} s before the job ended; chunks "
          f"by the helper {sorted(c for c, _ in workers.chunks(helper, job_id))}")
