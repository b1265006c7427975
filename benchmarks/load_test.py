"""Bounded load test of the HTTP API on loopback: a real uvicorn server in its own process, and
this process sending status polls and result downloads at a fixed rate (open loop: requests go
out on schedule whether or not earlier ones have returned, so a slow server shows up as latency,
not as a lower rate). Reports p50/p99/max latency, the achieved rate and the errors.

    OMP_NUM_THREADS=1 python benchmarks/load_test.py --rate 200 --duration 60            # SQLite
    OMP_NUM_THREADS=1 python benchmarks/load_test.py --rate 200 --duration 60 --postgres

``--postgres`` uses a fresh database on HOSTCP_TEST_POSTGRES_URL's server (default
postgresql+psycopg://postgres@127.0.0.1:5432/test), dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "hostcp_core" / "sample_data"
ADMIN_URL = os.environ.get("HOSTCP_TEST_POSTGRES_URL",
                           "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# share of each request kind in the mix
MIX = (("status", 0.5), ("values_page", 0.25), ("subset_csv", 0.15), ("job_list", 0.1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ApiServer:
    """``hostcp serve`` in a subprocess on 127.0.0.1 (its own process group)."""

    def __init__(self, data_dir: Path, database_url: str | None = None) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {**os.environ, "HOSTCP_ENV": "test", "HOSTCP_DATA_DIR": str(self.data_dir),
               "HOSTCP_SECRET_KEY": "load-test-secret", "HOSTCP_CURVE_EPOCHS": "3",
               "HOSTCP_CURVE_FRACTIONS": "[0.25, 0.5, 1.0]", "HOSTCP_RUNNER_POLL_S": "0.2",
               "OMP_NUM_THREADS": "1"}
        env.pop("HOSTCP_BROKER_URL", None)
        if self.database_url:
            env["HOSTCP_DATABASE_URL"] = self.database_url
        else:
            env.pop("HOSTCP_DATABASE_URL", None)
        return env

    def settings(self):
        from app.core.config import Settings

        return Settings(env="test", data_dir=self.data_dir, database_url=self.database_url,
                        secret_key="load-test-secret")

    def start(self, timeout: float = 60.0) -> ApiServer:
        import httpx

        self.log = open(self.data_dir / "api.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port",
             str(self.port)], cwd=ROOT, env=self.env(), stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API exited: see {self.data_dir / 'api.log'}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the API did not become ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(5)
        if getattr(self, "log", None):
            self.log.close()


def create_key(settings) -> str:
    from app.db import repo
    from app.db.session import session_scope

    with session_scope(settings) as s:
        _, token = repo.create_api_key(s, name=f"load-{uuid.uuid4().hex[:6]}")
    return token


def finished_job(base_url: str, token: str, timeout: float = 120.0) -> str:
    """Upload the bundled sample data, run a fast job to completion; its id."""
    from app.client import HostcpClient

    with HostcpClient(base_url, api_key=token) as c:
        train = c.upload_dataset(str(SAMPLE / "train.csv"), id_column="id")
        test = c.upload_dataset(str(SAMPLE / "test.csv"), id_column="id")
        job = c.submit_job(train["id"], test["id"], method="random", fraction=0.2)
        job = c.wait(job["id"], timeout=timeout)
    if job["status"] != "succeeded":
        raise RuntimeError(f"the job did not succeed: {job}")
    return job["id"]


def request_plan(job_id: str, n: int, seed: int = 0) -> list[tuple[str, str]]:
    paths = {"status": f"/v1/jobs/{job_id}",
             "values_page": f"/v1/jobs/{job_id}/values?page_size=100",
             "subset_csv": f"/v1/jobs/{job_id}/subset?format=csv",
             "job_list": "/v1/jobs?page_size=10"}
    kinds = [k for k, _ in MIX]
    picks = np.random.default_rng(seed).choice(len(kinds), size=n, p=[p for _, p in MIX])
    return [(kinds[i], paths[kinds[i]]) for i in picks]


def run_load(base_url: str, token: str, job_id: str, *, rate: float, duration: float,
             threads: int = 16, timeout: float = 10.0) -> dict:
    """Send ``rate`` requests per second for ``duration`` seconds; latency figures in ms."""
    import httpx

    plan = request_plan(job_id, int(rate * duration))
    local = threading.local()
    headers = {"Authorization": f"Bearer {token}"}

    def one(item: tuple[str, str], due: float) -> tuple[str, float, float, str | None]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)
        start = time.perf_counter()
        try:
            r = local.client.get(item[1])
            err = None if r.status_code == 200 and r.content else f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            err = type(exc).__name__
        end = time.perf_counter()
        # from the scheduled time: queueing in this generator counts (no coordinated omission)
        return item[0], (end - due) * 1e3, (end - start) * 1e3, err

    futures = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        t0 = time.perf_counter() + 0.05
        for i, item in enumerate(plan):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(one, item, due))
        results = [f.result() for f in futures]
    elapsed = time.perf_counter() - t0
    lat = np.array([r[1] for r in results])
    service = np.array([r[2] for r in results])
    errors: dict[str, int] = {}
    for r in results:
        if r[3]:
            errors[r[3]] = errors.get(r[3], 0) + 1
    by_kind = {k: round(float(np.percentile([r[1] for r in results if r[0] == k], 99)), 1)
               for k, _ in MIX if any(r[0] == k for r in results)}
    return {"requests": len(results), "duration_s": round(elapsed, 2),
            "achieved_rate": round(len(results) / elapsed, 1), "target_rate": rate,
            "errors": sum(errors.values()), "error_kinds": errors,
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "max_ms": round(float(lat.max()), 1),
            "service_p50_ms": round(float(np.percentile(service, 50)), 1),
            "service_p99_ms": round(float(np.percentile(service, 99)), 1),
            "p99_ms_by_kind": by_kind}


def load_test(*, rate: float, duration: float, postgres: bool = False,
              data_dir: Path | None = None, threads: int = 16) -> dict:
    """Start a server (SQLite or a fresh Postgres database), finish one job, run the load."""
    from sqlalchemy import create_engine, text

    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="hostcp-load-")
        data_dir = Path(tmp.name)
    db_url, admin = None, None
    if postgres:
        name = f"hostcp_load_{uuid.uuid4().hex[:10]}"
        admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        db_url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    server = ApiServer(data_dir, db_url)
    try:
        if postgres:
            from app.db.migrate import upgrade

            upgrade(server.settings())
        server.start()
        token = create_key(server.settings())
        job_id = finished_job(server.url, token)
        out = run_load(server.url, token, job_id, rate=rate, duration=duration, threads=threads)
        out["database"] = "postgres" if postgres else "sqlite"
        out["server_alive"] = server.proc.poll() is None
        return out
    finally:
        server.stop()
        from app.db.session import dispose_engines

        dispose_engines()
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{db_url.rsplit("/", 1)[1]}" '
                                  "WITH (FORCE)"))
            admin.dispose()
        if tmp is not None:
            tmp.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=200.0, help="requests per second")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds (bounded)")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--postgres", action="store_true")
    args = ap.parse_args()
    duration = min(args.duration, 600.0)
    print(json.dumps(load_test(rate=args.rate, duration=duration, postgres=args.postgres,
                               threads=args.threads), indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
