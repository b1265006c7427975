"""Bounded load test of the HTTP API on loopback: a real uvicorn server in its own process(es),
and this process sending status polls and result downloads at a fixed rate (open loop: requests
go out on schedule whether or not earlier ones have returned, so a slow server shows up as
latency, not as a lower rate). Reports p50/p99/max latency, the achieved rate, the errors, and
the CPU the server's processes spent per request (less sensitive than latency to other work on
a shared machine).

    OMP_NUM_THREADS=1 python benchmarks/load_test.py --rate 200 --duration 60            # SQLite
    OMP_NUM_THREADS=1 python benchmarks/load_test.py --rate 200 --duration 60 --postgres
    # several configurations, one after the other, figures side by side:
    OMP_NUM_THREADS=1 python benchmarks/load_test.py --rate 200 --duration 60 \
        --compare sqlite:1 sqlite:2 postgres:1 postgres:2

A configuration is ``DATABASE:WORKERS`` (``hostcp serve --workers``). ``postgres`` uses a fresh
database on HOSTCP_TEST_POSTGRES_URL's server (default
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

    def __init__(self, data_dir: Path, database_url: str | None = None,
                 workers: int = 1) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.workers = workers
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
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # `serve --workers N` sets its own
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
             str(self.port), "--workers", str(self.workers)], cwd=ROOT, env=self.env(),
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API exited: see {self.data_dir / 'api.log'}")
            try:
                # every process must answer before the load starts: the load's keep-alive
                # connections, opened at once, would all go to a process that is up while
                # another is still importing (seen in CI: 130 requests to one of two)
                if (httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
                        and self._answering() >= self.workers):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the API did not become ready ({self._answering()} of "
                           f"{self.workers} processes answered)")

    def _answering(self) -> int:
        """How many API processes have answered a request (always 1 with one process)."""
        if self.workers == 1:
            return 1
        return sum(1 for n in requests_by_pid(self.data_dir / "prometheus").values() if n > 0)

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


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its live descendants (Linux
    /proc; 0 elsewhere). The API processes and the embedded runner are all in the tree."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo, seen = 0.0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or no /proc
    return total


def requests_by_pid(metrics_dir: Path) -> dict[str, float]:
    """With several API processes (prometheus_client multiprocess files, one per process):
    the HTTP requests each process counted, by pid."""
    import json as _json

    from prometheus_client.mmap_dict import MmapedDict

    out: dict[str, float] = {}
    for path in Path(metrics_dir).glob("counter_*.db"):
        pid = path.stem.split("_", 1)[1]
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            if _json.loads(key)[1] == "hostcp_http_requests_total":  # (metric, sample, ...)
                out[pid] = out.get(pid, 0.0) + value
    return out


def backends_cpu_s(admin, database: str) -> float:
    """CPU seconds used so far by the Postgres backends now connected to ``database`` (their
    processes are on this machine; backends that closed meanwhile are not counted)."""
    from sqlalchemy import text

    with admin.connect() as conn:
        pids = conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = :d"),
                            {"d": database}).scalars().all()
    return sum(tree_cpu_s(pid) for pid in pids)


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


def load_test(*, rate: float, duration: float, postgres: bool = False, workers: int = 1,
              data_dir: Path | None = None, threads: int = 16) -> dict:
    """Start a server (SQLite or a fresh Postgres database; ``workers`` API processes), finish
    one job, run the load."""
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
    server = ApiServer(data_dir, db_url, workers=workers)
    try:
        if postgres:
            from app.db.migrate import upgrade

            upgrade(server.settings())
        server.start()
        token = create_key(server.settings())
        job_id = finished_job(server.url, token)
        # warm-up, not counted: each API process imports what its first CSV or page needs
        run_load(server.url, token, job_id, rate=min(rate, 50.0), duration=1.0,
                 threads=threads)
        load_before = os.getloadavg()[0]
        db_name = db_url.rsplit("/", 1)[1] if postgres else None
        db0 = backends_cpu_s(admin, db_name) if postgres else 0.0
        cpu0, client0 = tree_cpu_s(server.proc.pid), time.process_time()
        out = run_load(server.url, token, job_id, rate=rate, duration=duration, threads=threads)
        cpu1, client1 = tree_cpu_s(server.proc.pid), time.process_time()
        if postgres:
            out["postgres_cpu_ms_per_request"] = round(
                1e3 * (backends_cpu_s(admin, db_name) - db0) / out["requests"], 2)
        out["database"] = "postgres" if postgres else "sqlite"
        out["workers"] = workers
        out["server_cpu_ms_per_request"] = round(1e3 * (cpu1 - cpu0) / out["requests"], 2)
        out["client_cpu_ms_per_request"] = round(1e3 * (client1 - client0) / out["requests"], 2)
        out["loadavg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        if workers > 1:  # `serve --workers` keeps its metrics under the data directory
            out["requests_by_pid"] = requests_by_pid(data_dir / "prometheus")
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


def parse_config(spec: str) -> tuple[bool, int]:
    """``sqlite:2`` -> (postgres=False, workers=2); the worker count defaults to 1."""
    database, _, workers = spec.partition(":")
    if database not in ("sqlite", "postgres"):
        raise ValueError(f"{spec!r}: the database is sqlite or postgres")
    return database == "postgres", int(workers or 1)


def compare(configs: list[str], *, rate: float, duration: float, threads: int = 16,
            pause_s: float = 5.0) -> list[dict]:
    """Run the same load against each configuration in turn (a pause between runs lets the
    previous server's processes go)."""
    results = []
    for i, spec in enumerate(configs):
        if i:
            time.sleep(pause_s)
        postgres, workers = parse_config(spec)
        out = load_test(rate=rate, duration=duration, postgres=postgres, workers=workers,
                        threads=threads)
        out["config"] = spec
        results.append(out)
        print(f"{spec}: {json.dumps(out)}", file=sys.stderr, flush=True)
    return results


COLUMNS = (("config", "config"), ("target/s", "target_rate"), ("achieved/s", "achieved_rate"),
           ("errors", "errors"), ("p50 ms", "p50_ms"), ("p99 ms", "p99_ms"),
           ("max ms", "max_ms"), ("server CPU ms/req", "server_cpu_ms_per_request"),
           ("Postgres CPU ms/req", "postgres_cpu_ms_per_request"),
           ("load 1m before/after", "loadavg_1m"))


def table(results: list[dict]) -> str:
    """The figures side by side, one row per configuration (Markdown)."""
    rows = [[h for h, _ in COLUMNS], ["---"] * len(COLUMNS)]
    for r in results:
        cells = [r.get(k, "-") for _, k in COLUMNS]
        rows.append(["/".join(map(str, c)) if isinstance(c, list) else str(c) for c in cells])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=200.0, help="requests per second")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds (bounded)")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--postgres", action="store_true")
    ap.add_argument("--workers", type=int, default=1, help="API processes")
    ap.add_argument("--compare", nargs="+", metavar="DATABASE:WORKERS",
                    help="run each configuration in turn, e.g. sqlite:1 sqlite:2 postgres:2; "
                    "prints a table")
    args = ap.parse_args()
    duration = min(args.duration, 600.0)
    if args.compare:
        for spec in args.compare:
            parse_config(spec)  # refuse a typo before the first run
        results = compare(args.compare, rate=args.rate, duration=duration, threads=args.threads)
        print(json.dumps(results, indent=2))
        print(table(results))
        return
    print(json.dumps(load_test(rate=args.rate, duration=duration, postgres=args.postgres,
                               workers=args.workers, threads=args.threads), indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
