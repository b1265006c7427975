"""Real-sized jobs through the service over HTTP: upload -> job -> downloads, timed per stage,
with the peak memory of the API and worker processes.

Synthetic tables (20 numeric features, 3 string classes, 10% of training labels flipped; ids
in an ``id`` column) are written once as Parquet and CSV under ``--data-dir`` and reused. For
each mode (``embedded``: ``hostcp serve`` on SQLite with its runner; ``server``: Postgres +
Redis + one Celery worker + ``hostcp serve``), each size and each method, the script uploads
the training table (CSV, then Parquet; the job uses the Parquet one) and the test table, runs
the job while polling its status, and downloads every result. It prints one row per case:

* seconds per stage: uploads, queue wait, the job's own timings (load, valuation, mislabels,
  curves, total), the wall time from submit to terminal state, each download;
* peak RSS (MB) of the API process during the uploads and during the downloads (with its RSS
  just before the downloads, ``api_before_dl_mb``), and of the worker (the runner process, or
  Celery's main process and pool child) during the job: each process's ``VmHWM``, reset
  (``/proc/<pid>/clear_refs`` = 5) at the start of each phase;
* the longest time the job's (stage, progress) stayed unchanged while polling (``--poll``).

With ``--cancel``, it also submits one job per stage (loading, valuing, mislabels, curves,
saving) at each of ``--cancel-rows`` and cancels it as soon as the job is seen in that stage,
printing the seconds from the cancel request to the job's terminal state and that state (on
SQLite a cancel sent while the results are saved waits for the save and finds the job
succeeded; on Postgres it abandons the save).

Examples:
    python benchmarks/scale_job.py --rows 100000 --methods knn_shapley --modes embedded
    python benchmarks/scale_job.py                     # 100k and 1M, every method, both modes
    python benchmarks/scale_job.py --rows 1000000 --methods knn_shapley --cancel
    python benchmarks/scale_job.py --rows 5000 --test-rows 300 --methods knn_shapley \\
        --modes embedded --json out.jsonl              # the smoke run (tests/service)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N_FEATURES = 20
CLASSES = ("alpha", "beta", "gamma")
FLIP_RATE = 0.10
HOSTCP_MAX_ROWS = 100_000  # HOST-CP is run at 100k (the scope), not at 1M
ADMIN_URL = os.environ.get("HOSTCP_TEST_POSTGRES_URL",
                           "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("HOSTCP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TERMINAL = ("succeeded", "failed", "canceled", "timed_out")
CANCEL_STAGES = ("loading", "valuing", "mislabels", "curves", "saving")

# one row per case, in this order (the smoke test checks that every column is printed)
COLUMNS = ["mode", "rows", "method", "status", "up_csv_s", "up_parquet_s", "up_test_s",
           "queue_s", "load_s", "valuation_s", "mislabels_s", "curves_s", "job_total_s",
           "job_wall_s", "dl_values_csv_s", "dl_values_parquet_s", "dl_subset_csv_s",
           "dl_mislabels_csv_s", "dl_mislabels_parquet_s", "dl_curves_csv_s", "end_to_end_s",
           "api_upload_mb", "api_before_dl_mb", "api_download_mb", "worker_peak_mb",
           "max_progress_gap_s", "gap_stage"]
CANCEL_COLUMNS = ["mode", "rows", "method", "stage", "seen_at_s", "cancel_s", "final_status"]
DOWNLOADS = [("values", "csv"), ("values", "parquet"), ("subset", "csv"),
             ("mislabels", "csv"), ("mislabels", "parquet"), ("curves", "csv")]


# --- data -------------------------------------------------------------------------------------

def make_tables(n: int, n_test: int, seed: int, data_dir: Path) -> dict[str, Path]:
    """train.parquet, train.csv and test.parquet for ``n`` training rows (cached by name)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    stem = data_dir / f"scale-{n}-{n_test}-s{seed}"
    paths = {"train_parquet": stem.with_name(stem.name + "-train.parquet"),
             "train_csv": stem.with_name(stem.name + "-train.csv"),
             "test_parquet": stem.with_name(stem.name + "-test.parquet")}
    if all(p.exists() for p in paths.values()):
        return paths
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=1.0, size=(len(CLASSES), N_FEATURES))

    def table(rows: int, flip: bool, prefix: str, chunk_rng) -> pa.Table:
        y = chunk_rng.integers(0, len(CLASSES), rows)
        X = centers[y] + chunk_rng.normal(scale=1.5, size=(rows, N_FEATURES))
        X = np.round(X, 4)  # CSV and Parquet then hold the same numbers
        if flip:  # 10% of labels moved to another class
            idx = chunk_rng.random(rows) < FLIP_RATE
            y = np.where(idx, (y + chunk_rng.integers(1, len(CLASSES), rows)) % len(CLASSES), y)
        cols = {"id": pa.array([f"{prefix}{i}" for i in range(rows)])}
        cols.update({f"f{j}": pa.array(X[:, j]) for j in range(N_FEATURES)})
        cols["label"] = pa.array(np.asarray(CLASSES)[y])
        return pa.table(cols)

    chunk = 200_000  # written in pieces: generating 1M rows never holds the whole table
    writer = csv_out = None
    try:
        for start in range(0, n, chunk):
            t = table(min(chunk, n - start), True, f"r{start}-", np.random.default_rng(
                [seed, start]))
            if writer is None:
                writer = pq.ParquetWriter(paths["train_parquet"], t.schema)
                csv_out = pacsv.CSVWriter(paths["train_csv"], t.schema)
            writer.write_table(t)
            csv_out.write_table(t)
    finally:
        if writer is not None:
            writer.close()
            csv_out.close()
    pq.write_table(table(n_test, False, "t", np.random.default_rng([seed, 10**9])),
                   paths["test_parquet"])
    return paths


# --- processes --------------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    out = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out += [int(c) for c in fh.read().split()]
    return out


def _tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def _status_kb(pid: int, field: str) -> int:
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    return 0


def reset_peak(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/clear_refs", "w") as fh:
                fh.write("5")  # resets VmHWM to the current RSS


def peak_mb(pids: list[int]) -> float:
    return max((_status_kb(p, "VmHWM") for p in pids), default=0) / 1024


class Service:
    """The processes of one mode: ``api_pids()`` and ``worker_pids()`` name what to measure."""

    def __init__(self, mode: str, workdir: Path, threads: int,
                 extra_env: dict[str, str] | None = None) -> None:
        self.mode, self.workdir, self.threads = mode, workdir, threads
        self.procs: list[subprocess.Popen] = []
        self.db_url: str | None = None
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        tag = uuid.uuid4().hex[:8]
        self.env = {**os.environ, "HOSTCP_ENV": "dev", "HOSTCP_DATA_DIR": str(workdir / "data"),
                    "HOSTCP_SECRET_KEY": f"bench-{tag}", "HOSTCP_MAX_UPLOAD_BYTES": str(2**31),
                    "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                    "PYTHONUNBUFFERED": "1"}
        for k in ("HOSTCP_DATABASE_URL", "HOSTCP_BROKER_URL"):
            self.env.pop(k, None)
        self.env.update(extra_env or {})
        if mode == "server":
            self.env.update({"HOSTCP_BROKER_URL": REDIS_URL, "HOSTCP_QUEUE_CPU": f"cpu-{tag}",
                             "HOSTCP_QUEUE_GPU": f"gpu-{tag}"})

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen:
        fh = open(self.workdir / log, "ab")
        p = subprocess.Popen([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=self.env,
                             stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        fh.close()
        self.procs.append(p)
        return p

    def start(self) -> Service:
        import httpx

        if self.mode == "server":
            self.db_url = _create_database()
            self.env["HOSTCP_DATABASE_URL"] = self.db_url
            subprocess.run([sys.executable, "-m", "app.cli", "migrate"], cwd=ROOT, env=self.env,
                           check=True, capture_output=True)
            self.worker = self._spawn(["worker", "--queue", "cpu", "--concurrency", "1"],
                                      "worker.log")
        self.api = self._spawn(["serve", "--host", "127.0.0.1", "--port", str(self.port)],
                               "api.log")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.api.poll() is not None:
                raise RuntimeError(f"the API exited: {self.log('api.log')}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.3)
        else:
            raise RuntimeError(f"the API did not become ready: {self.log('api.log')}")
        out = subprocess.run([sys.executable, "-m", "app.cli", "keys", "create", "--name",
                              "bench"], cwd=ROOT, env=self.env, check=True,
                             capture_output=True, text=True)
        self.token = out.stdout.strip().splitlines()[-1]
        return self

    def log(self, name: str) -> str:
        path = self.workdir / name
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def api_pids(self) -> list[int]:
        return [self.api.pid]

    def worker_pids(self) -> list[int]:
        # embedded: the runner is a child of `serve`; server: Celery's main process and child
        if self.mode == "embedded":
            return [p for p in _tree(self.api.pid) if p != self.api.pid]
        return _tree(self.worker.pid)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGKILL)
                    p.wait(10)
        if self.db_url:
            _drop_database(self.db_url)


def _create_database() -> str:
    from sqlalchemy import create_engine, text

    name = f"hostcp_scale_{uuid.uuid4().hex[:12]}"
    engine = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def _drop_database(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    engine.dispose()


# --- one case ---------------------------------------------------------------------------------

def _timed_upload(client, path: Path, svc: Service) -> tuple[dict, float]:
    t = time.perf_counter()
    rec = client.upload_dataset(path, id_column="id", label_column="label")
    return rec, time.perf_counter() - t


def upload_all(client, svc: Service, paths: dict[str, Path]) -> dict:
    reset_peak(svc.api_pids())
    _, up_csv = _timed_upload(client, paths["train_csv"], svc)
    train, up_parquet = _timed_upload(client, paths["train_parquet"], svc)
    test, up_test = _timed_upload(client, paths["test_parquet"], svc)
    return {"train": train["id"], "test": test["id"], "up_csv_s": up_csv,
            "up_parquet_s": up_parquet, "up_test_s": up_test,
            "api_upload_mb": peak_mb(svc.api_pids())}


def watch(client, job_id: str, poll_s: float, timeout_s: float,
          on_poll=None) -> tuple[dict, float, str]:
    """Poll to the end; the longest time (stage, progress) stayed the same while running."""
    last_key, last_change, gap, gap_stage = None, None, 0.0, "-"
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get_job(job_id)
        now = time.monotonic()
        if job["status"] == "running":
            key = (job.get("stage"), job["progress"])
            if key != last_key:
                if last_change is not None and now - last_change > gap:
                    gap, gap_stage = now - last_change, str(last_key[0])
                last_key, last_change = key, now
        if on_poll is not None:
            on_poll(job)
        if job["status"] in TERMINAL:
            if last_change is not None and now - last_change > gap:
                gap, gap_stage = now - last_change, str(last_key[0])
            return job, gap, gap_stage
        if now > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s} s")
        time.sleep(poll_s)


def download(http, job_id: str, kind: str, fmt: str) -> float:
    """Seconds to receive the whole file (streamed, not kept)."""
    t = time.perf_counter()
    with http.stream("GET", f"/v1/jobs/{job_id}/{kind}", params={"format": fmt}) as r:
        r.raise_for_status()
        for _ in r.iter_bytes(1 << 20):
            pass
    return time.perf_counter() - t


def run_case(client, http, svc: Service, ups: dict, n: int, method: str, args) -> dict:
    row = {"mode": svc.mode, "rows": n, "method": method, **ups}
    worker = svc.worker_pids()
    reset_peak(worker)
    t = time.perf_counter()
    job = client.submit_job(ups["train"], ups["test"], method=method, fraction=args.fraction,
                            seed=args.seed, params=_params(method, args),
                            evaluation=args.evaluation)
    job, gap, gap_stage = watch(client, job["id"], args.poll, args.job_timeout)
    row["job_wall_s"] = time.perf_counter() - t
    row["worker_peak_mb"] = peak_mb(svc.worker_pids())
    row["status"] = job["status"]
    timings = job.get("timings") or {}
    for col, key in (("load_s", "load_s"), ("valuation_s", "valuation_s"),
                     ("mislabels_s", "mislabels_s"), ("curves_s", "curves_s"),
                     ("job_total_s", "total_s")):
        row[col] = timings.get(key)
    row["queue_s"] = _seconds_between(job.get("created_at"), job.get("started_at"))
    row["max_progress_gap_s"], row["gap_stage"] = gap, gap_stage
    if job["status"] == "succeeded":
        # the API's resident size going in (what imports and earlier requests left), then its
        # peak while serving the files
        row["api_before_dl_mb"] = max(_status_kb(p, "VmRSS") for p in svc.api_pids()) / 1024
        reset_peak(svc.api_pids())
        for kind, fmt in DOWNLOADS:
            row[f"dl_{kind}_{fmt}_s"] = download(http, job["id"], kind, fmt)
        row["api_download_mb"] = peak_mb(svc.api_pids())
        row["end_to_end_s"] = (ups["up_parquet_s"] + ups["up_test_s"] + row["job_wall_s"]
                               + row["dl_mislabels_csv_s"])
    else:
        row["error"] = (job.get("error") or {}).get("detail")
    return row


def stored_case(client, http, svc: Service, ups: dict, n: int) -> dict:
    """Downloads of ``n`` result rows written straight into the database as a finished job (no
    valuation runs): the download path at a size whose job would take long. The row's method
    is ``stored-rows``; its job columns are empty."""
    from sqlalchemy import insert, update

    from app.core.config import Settings
    from app.db import repo
    from app.db.models import Job, JobStatus, PointResult
    from app.db.session import dispose_engines, session_scope

    settings = Settings(data_dir=svc.workdir / "data", database_url=svc.env.get(
        "HOSTCP_DATABASE_URL"), secret_key=svc.env["HOSTCP_SECRET_KEY"])
    rng = np.random.default_rng(0)
    with session_scope(settings) as s:
        owner = repo.authenticate(s, token=svc.token)
        job = repo.create_job(s, owner_id=owner.id, train_dataset_id=ups["train"],
                              test_dataset_id=ups["test"], method="knn_shapley", params={},
                              fraction=0.1, seed=0, queue="stored", max_attempts=1)
        s.execute(update(Job).where(Job.id == job.id).values(status=JobStatus.SUCCEEDED))
        job_id = job.id
    for start in range(0, n, 50_000):
        idx = np.arange(start, min(n, start + 50_000))
        scores, ranks = rng.normal(size=idx.size), rng.permutation(n)[: idx.size] + 1
        with session_scope(settings) as s:
            s.execute(insert(PointResult), [
                {"job_id": job_id, "point_index": int(i), "point_id": f"r{i}",
                 "score": float(scores[k]), "rank": int(ranks[k]), "selected": bool(i % 10 == 0),
                 "given_label": CLASSES[i % 3], "suggested_label": CLASSES[(i + 1) % 3],
                 "mislabel_score": float(-scores[k]), "mislabel_rank": int(i) + 1,
                 "suspected_mislabel": bool(i % 20 == 0)} for k, i in enumerate(idx)])
    dispose_engines()
    row = {"mode": svc.mode, "rows": n, "method": "stored-rows", "status": "succeeded", **ups}
    row["api_before_dl_mb"] = max(_status_kb(p, "VmRSS") for p in svc.api_pids()) / 1024
    reset_peak(svc.api_pids())
    for kind, fmt in DOWNLOADS:
        if kind != "curves":
            row[f"dl_{kind}_{fmt}_s"] = download(http, job_id, kind, fmt)
    row["api_download_mb"] = peak_mb(svc.api_pids())
    return row


def _params(method: str, args) -> dict:
    return json.loads(args.params).get(method, {}) if args.params else {}


def _seconds_between(a: str | None, b: str | None) -> float | None:
    from datetime import datetime

    if not a or not b:
        return None
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def cancel_case(client, svc: Service, ups: dict, n: int, method: str, stage: str,
                args) -> dict:
    """Submit, cancel as soon as the job is seen in ``stage``, time the cancel."""
    row = {"mode": svc.mode, "rows": n, "method": method, "stage": stage}
    t0 = time.perf_counter()
    job = client.submit_job(ups["train"], ups["test"], method=method, fraction=args.fraction,
                            seed=args.seed, params=_params(method, args),
                            evaluation=args.evaluation)
    sent = {}

    def on_poll(j):
        if sent or j["status"] != "running":
            return
        now = (j.get("stage") or "").split(":")[0]
        later = (now in CANCEL_STAGES
                 and CANCEL_STAGES.index(now) > CANCEL_STAGES.index(stage))
        if now == stage or later:  # a stage missed between polls: cancel where the job is
            sent["at"], sent["stage"] = time.perf_counter(), now
            row["seen_at_s"] = sent["at"] - t0
            client.cancel_job(j["id"])

    job, _, _ = watch(client, job["id"], 0.1, args.job_timeout, on_poll=on_poll)
    row["final_status"] = job["status"]
    row["cancel_s"] = time.perf_counter() - sent["at"] if sent else None
    if not sent:
        row["final_status"] += f" (never seen in {stage})"
    elif sent["stage"] != stage:
        row["final_status"] += f" (in {sent['stage']}: {stage} passed between polls)"
    return row


# --- output -----------------------------------------------------------------------------------

def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 100 else f"{v:.2f}"
    return str(v)


def print_table(rows: list[dict], columns: list[str]) -> None:
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c)
              for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for x in cells:
        print("  ".join(v.rjust(w) for v, w in zip(x, widths, strict=True)))
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--test-rows", type=int, default=2_000)
    ap.add_argument("--methods", nargs="+", default=["knn_shapley", "data_oob", "hostcp"])
    ap.add_argument("--modes", nargs="+", choices=["embedded", "server"],
                    default=["embedded", "server"])
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--evaluation", choices=["quick", "full", "none"], default=None,
                    help="the job's evaluation depth (default: the service's default)")
    ap.add_argument("--params", default=None,
                    help='JSON: per-method parameters, e.g. \'{"data_oob": {"n_jobs": 2}}\'')
    ap.add_argument("--hostcp-max-rows", type=int, default=HOSTCP_MAX_ROWS)
    ap.add_argument("--threads", type=int, default=2, help="OMP/MKL threads of the servers")
    ap.add_argument("--poll", type=float, default=0.5, help="status poll interval (s)")
    ap.add_argument("--job-timeout", type=float, default=3600.0)
    ap.add_argument("--cancel", action="store_true",
                    help="also time a cancel sent in each stage of a job")
    ap.add_argument("--cancel-stages", nargs="+", choices=CANCEL_STAGES, default=CANCEL_STAGES,
                    help="the stages --cancel cancels in (default: every one)")
    ap.add_argument("--cancel-rows", type=int, nargs="+", default=None,
                    help="sizes for --cancel (default: the largest of --rows)")
    ap.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "hostcp-scale")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON lines")
    ap.add_argument("--keep", action="store_true", help="keep the servers' work directory")
    ap.add_argument("--stored-results", action="store_true",
                    help="run no job: write the result rows straight into the database and "
                         "time the uploads and downloads only (method column: stored-rows)")
    ap.add_argument("--server-env", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra environment of the servers, e.g. HOSTCP_CURVE_EPOCHS=3")
    args = ap.parse_args(argv)
    extra_env = dict(kv.split("=", 1) for kv in args.server_env)
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the servers are always stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    import httpx

    from app.client import HostcpClient

    rows, cancels = [], []
    cancel_rows = set(args.cancel_rows or [max(args.rows)]) if args.cancel else set()
    for mode in args.modes:
        workdir = Path(tempfile.mkdtemp(prefix=f"hostcp-scale-{mode}-"))
        svc = Service(mode, workdir, args.threads, extra_env)
        try:
            svc.start()
            headers = {"Authorization": f"Bearer {svc.token}"}
            with HostcpClient(svc.url, api_key=svc.token, timeout=600) as client, \
                    httpx.Client(base_url=svc.url, headers=headers, timeout=600) as http:
                for n in args.rows:
                    t = time.perf_counter()
                    paths = make_tables(n, args.test_rows, args.seed, args.data_dir)
                    print(f"# {mode} {n} rows: tables ready in {time.perf_counter() - t:.1f} s "
                          f"({paths['train_parquet'].stat().st_size / 2**20:.0f} MB Parquet, "
                          f"{paths['train_csv'].stat().st_size / 2**20:.0f} MB CSV)",
                          flush=True)
                    ups = upload_all(client, svc, paths)
                    if args.stored_results:
                        rows.append(stored_case(client, http, svc, ups, n))
                        print(f"# {mode} {n} stored rows: " + " ".join(
                            f"{c}={_fmt(rows[-1].get(c))}" for c in COLUMNS[4:]), flush=True)
                        continue
                    for method in args.methods:
                        if method == "hostcp" and n > args.hostcp_max_rows:
                            continue
                        row = run_case(client, http, svc, ups, n, method, args)
                        rows.append(row)
                        print(f"# {mode} {n} {method}: {row['status']} "
                              + " ".join(f"{c}={_fmt(row.get(c))}" for c in COLUMNS[4:]),
                              flush=True)
                        if n in cancel_rows:
                            for stage in args.cancel_stages:
                                cancels.append(cancel_case(client, svc, ups, n, method, stage,
                                                           args))
                                print("# cancel " + " ".join(
                                    f"{c}={_fmt(cancels[-1].get(c))}" for c in CANCEL_COLUMNS),
                                    flush=True)
        except Exception:
            print(f"# {mode}: API log tail:\n{svc.log('api.log')}", file=sys.stderr)
            if mode == "server":
                print(f"# worker log tail:\n{svc.log('worker.log')}", file=sys.stderr)
            raise
        finally:
            svc.stop()
            if not args.keep:
                import shutil

                shutil.rmtree(workdir, ignore_errors=True)
    print()
    print_table(rows, COLUMNS)
    if cancels:
        print()
        print_table(cancels, CANCEL_COLUMNS)
    if args.json:
        with open(args.json, "w") as fh:
            for r in rows:
                fh.write(json.dumps({"kind": "case", **r}) + "\n")
            for r in cancels:
                fh.write(json.dumps({"kind": "cancel", **r}) + "\n")
    return 0 if all(r["status"] == "succeeded" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
