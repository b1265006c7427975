"""Scale-out of a TMC-Shapley job over Celery workers: the same job (same data, same seed) with
1 and then 2 worker processes on a fresh Postgres database and Redis, reporting the valuation
time of each, the speed-up and whether both gave the same values.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/shapley_scaleout.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/shapley_scaleout.py --permutations 60 --repeat 3

Needs Postgres (HOSTCP_TEST_POSTGRES_URL, default postgresql+psycopg://postgres@127.0.0.1:5432/
test) and Redis (HOSTCP_TEST_REDIS_URL, default redis://127.0.0.1:6379/0). Queue names are
unique per run, so no other worker on that Redis takes these tasks. The speed-up is of the
valuation stage (``timings.valuation_s``: what the chunks parallelise); the job's total time
also holds loading, mislabels and curves, which run on one worker (printed too). Each run starts
fresh worker processes; with ``--repeat`` the worker counts alternate round by round and the
figures are medians, so a burst of other load on the machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ADMIN_URL = os.environ.get("HOSTCP_TEST_POSTGRES_URL",
                           "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("HOSTCP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _settings(data_dir: Path, database_url: str, tag: str):
    from app.core.config import Settings

    return Settings(env="test", data_dir=data_dir, database_url=database_url,
                    broker_url=REDIS_URL, secret_key="bench", queue_cpu=f"cpu-{tag}",
                    queue_gpu=f"gpu-{tag}", progress_interval_s=0.5,
                    curve_fractions=(0.5, 1.0), curve_epochs=3)


def _datasets(settings, owner_id: int, n: int, seed: int) -> tuple[str, str]:
    from app.db import repo
    from app.db.session import session_scope
    from app.storage import Storage, dataset_arrays
    from hostcp_core import make_synthetic

    train, test = make_synthetic(n, n, seed=seed)
    store = Storage(settings.storage_root)
    ids = []
    with session_scope(settings) as s:
        for ds in (train, test):
            rec = repo.add_dataset(s, owner_id=owner_id, dataset=ds, name=ds.name,
                                   array_path=store.save_arrays(dataset_arrays(ds)))
            ids.append(rec.id)
    return ids[0], ids[1]


class Workers:
    """``hostcp worker`` processes (Celery, one task at a time each)."""

    def __init__(self, settings, count: int, log_dir: Path) -> None:
        s = settings
        self.env = {**os.environ, "HOSTCP_ENV": "test", "HOSTCP_DATA_DIR": str(s.data_dir),
                    "HOSTCP_DATABASE_URL": s.database_url, "HOSTCP_BROKER_URL": s.broker_url,
                    "HOSTCP_QUEUE_CPU": s.queue_cpu, "HOSTCP_QUEUE_GPU": s.queue_gpu,
                    "HOSTCP_SECRET_KEY": s.secret_key, "HOSTCP_PROGRESS_INTERVAL_S": "0.5",
                    "HOSTCP_CURVE_FRACTIONS": "[0.5, 1.0]", "HOSTCP_CURVE_EPOCHS": "3",
                    "OMP_NUM_THREADS": "1"}
        self.count, self.log_dir = count, log_dir
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def __enter__(self) -> Workers:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for i in range(self.count):
            log = self.log_dir / f"worker-{self.count}-{i}.log"
            self.logs.append(log)
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker", "--queue", "cpu", "--loglevel",
                 "INFO"], cwd=ROOT, env=self.env, stdout=open(log, "wb"),
                stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 90
        while not all(" ready." in p.read_text(errors="replace") for p in self.logs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError("workers did not start: " + "\n".join(
                    p.read_text(errors="replace")[-2000:] for p in self.logs))
            time.sleep(0.3)
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)

    def compute_s(self, job_id: str) -> list[float]:
        """Seconds each worker process spent computing parts of ``job_id`` (its log lines)."""
        pattern = rf"job {re.escape(job_id)}: chunk \d+ \[\d+:\d+\] computed in ([\d.]+) s"
        return [round(sum(float(x) for x in re.findall(pattern, p.read_text(errors="replace"))),
                      2) for p in self.logs]

    def chunks_computed(self, job_id: str) -> list[int]:
        """Chunks of ``job_id`` each worker process computed (its own log lines, whether as
        the job's coordinator or as a helper)."""
        line = f"job {job_id}: chunk "
        return [sum(1 for x in p.read_text(errors="replace").splitlines()
                    if line in x and " computed in " in x) for p in self.logs]


def _cpu_now() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine, CPU seconds of this process and its waited-for
    children): their difference over a run is what other processes used meanwhile (Postgres
    and Redis serving the run included), the honest measure of a shared machine's noise."""
    try:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    busy = f[0] + f[1] + f[2] + f[5] + f[6] + f[7]  # user nice system irq softirq steal
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return (busy / os.sysconf("SC_CLK_TCK"),
            me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime)


def _run_job(settings, owner_id: int, train_id: str, test_id: str, params: dict,
             timeout: float) -> dict:
    from app.db import repo
    from app.db.models import Job, JobStatus, PointResult
    from app.db.session import session_scope
    from app.jobs import dispatch
    from worker.celery_app import CeleryTransport

    with session_scope(settings) as s:
        job = repo.create_job(s, owner_id=owner_id, train_dataset_id=train_id,
                              test_dataset_id=test_id, method="tmc_shapley", params=params,
                              fraction=0.2, seed=0, queue=settings.queue_cpu, max_attempts=3)
        job_id = job.id
    t0 = time.perf_counter()
    dispatch.install(CeleryTransport(settings))  # this process sends as the API would
    assert dispatch.enqueue(job_id, settings.queue_cpu), "could not enqueue"
    deadline = time.monotonic() + timeout
    while True:
        with session_scope(settings) as s:
            job = s.get(Job, job_id)
            status, timings, summary = job.status, job.timings, job.summary
        if status in JobStatus.TERMINAL:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} still {status} after {timeout} s")
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    if status != JobStatus.SUCCEEDED:
        raise RuntimeError(f"job {job_id} {status}")
    with session_scope(settings) as s:
        values = np.array([p.score for p in s.query(PointResult).filter_by(job_id=job_id)
                           .order_by(PointResult.point_index)])
    return {"job_id": job_id, "wall_s": wall, "valuation_s": timings["valuation_s"],
            "extra": summary["extra"], "values": values}


def main(argv: list[str] | None = None) -> int:
    from sqlalchemy import create_engine, text

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="training (and test) points")
    ap.add_argument("--permutations", type=int, default=40)
    ap.add_argument("--chunk", type=int, default=4, help="permutations per chunk")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds (each runs every worker count; figures are medians)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    ap.add_argument("--logs", type=Path, default=None,
                    help="keep the worker logs here (default: a temporary directory)")
    args = ap.parse_args(argv)

    from app.core.config import configure
    from app.db import repo
    from app.db.migrate import upgrade
    from app.db.session import dispose_engines, session_scope

    tag = uuid.uuid4().hex[:10]
    name = f"hostcp_bench_{tag}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    params = {"max_permutations": args.permutations, "check_every": args.chunk,
              "err": 1e-12, "n_bootstrap": 20}  # err: run every permutation, for timing
    runs: dict[int, list[dict]] = {count: [] for count in args.workers}
    load_before = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = _settings(Path(tmp) / "data", ADMIN_URL.rsplit("/", 1)[0] + f"/{name}",
                                 tag)
            configure(settings)
            upgrade(settings)
            with session_scope(settings) as s:
                owner, _ = repo.create_api_key(s, name="bench")
                owner_id = owner.id
            train_id, test_id = _datasets(settings, owner_id, args.n, seed=0)
            for r in range(args.repeat):
                for count in args.workers:
                    log_dir = (args.logs or Path(tmp)) / f"r{r}"
                    cpu0, t0 = _cpu_now(), time.perf_counter()
                    with Workers(settings, count, log_dir) as workers:
                        run = _run_job(settings, owner_id, train_id, test_id, params,
                                       args.timeout)
                        time.sleep(1.0)  # let late helper logs land
                        run["parts_by_worker"] = workers.chunks_computed(run["job_id"])
                        run["compute_s_by_worker"] = workers.compute_s(run["job_id"])
                    cpu1, span = _cpu_now(), time.perf_counter() - t0
                    run["load_average"] = os.getloadavg()
                    run["other_cpu_s"] = (None if cpu0 is None or cpu1 is None else
                                          round((cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1]), 2))
                    run["span_s"] = round(span, 1)
                    runs[count].append(run)
                    print(f"{count} worker(s): valuation {run['valuation_s']:.2f} s, job "
                          f"{run['wall_s']:.1f} s, chunks {run['extra']['n_chunks']}, parts "
                          f"computed by each worker process {run['parts_by_worker']} in "
                          f"{run['compute_s_by_worker']} s; other processes used "
                          f"{run['other_cpu_s']} CPU-s of the {span:.0f} s this run took "
                          f"(workers' start and stop included); load "
                          f"{run['load_average'][0]:.2f}", flush=True)
    finally:
        configure(None)
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    first = args.workers[0]
    base = runs[first][0]
    median = {c: (float(np.median([r["valuation_s"] for r in rs])),
                  float(np.median([r["wall_s"] for r in rs]))) for c, rs in runs.items()}
    report = {"n": args.n, "permutations": args.permutations, "chunk": args.chunk,
              "repeat": args.repeat, "load_average_before": load_before,
              "load_average_after": os.getloadavg(), "runs": {}}
    for count, rs in runs.items():
        same = all(np.array_equal(r["values"], base["values"]) for r in rs)
        speedup = median[first][0] / median[count][0]
        report["runs"][count] = {
            "valuation_s": [r["valuation_s"] for r in rs], "wall_s": [r["wall_s"] for r in rs],
            "median_valuation_s": median[count][0], "median_wall_s": median[count][1],
            "speedup_vs_first": speedup, "wall_speedup_vs_first": median[first][1]
            / median[count][1], "same_values": same,
            "parts_by_worker": [r["parts_by_worker"] for r in rs],
            "compute_s_by_worker": [r["compute_s_by_worker"] for r in rs],
            "other_cpu_s": [r["other_cpu_s"] for r in rs], "span_s": [r["span_s"] for r in rs],
            "speedup_on_own_work": [sum(r["compute_s_by_worker"]) / r["valuation_s"] for r in rs],
            "load_average": [r["load_average"] for r in rs]}
        own = float(np.median(report["runs"][count]["speedup_on_own_work"]))
        print(f"{count} worker(s): valuation speed-up {speedup:.2f}x over {first} (median of "
              f"{len(rs)}; whole job {median[first][1] / median[count][1]:.2f}x), same values as "
              f"with {first}: {same}; on its own work {own:.2f}x (seconds of part computing "
              f"summed over the workers / valuation seconds: free of drift in the machine's "
              f"speed between runs)")
    print(f"load average before {load_before}, after {report['load_average_after']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
