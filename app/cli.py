"""The ``hostcp`` command line, composed here (the one place that sees every layer): the
library's own commands (``hostcp value``, from ``hostcp_core.cli``) and the service's (serve,
worker, keys create, migrate, remote ...). Every command sets ``func``, so ``args.func(args)``
runs it.

The service commands import what they use inside themselves: ``hostcp value`` must start
without FastAPI, SQLAlchemy or Celery (the service extra is optional), and no command pays for
another's imports.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app import cli_dashboards
from hostcp_core import cli as library_cli


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="run the HTTP API (embedded: SQLite + a runner)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=None,
                   help="API processes (default $HOSTCP_API_WORKERS or 1); in embedded mode "
                   "they share one runner")
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser("worker", help="run jobs: a Celery worker when HOSTCP_BROKER_URL "
                              "is set, else the embedded runner in the foreground")
    p.add_argument("--queue", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--concurrency", type=int, default=1,
                   help="processes (GPU workers: one per GPU, keep 1)")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_worker)

    p = subparsers.add_parser("keys", help="API keys")
    keys = p.add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("create", help="create an API key and print it (shown once)")
    k.add_argument("--name", default="default")
    k.set_defaults(func=cmd_keys_create)

    p = subparsers.add_parser("migrate", help="upgrade the database schema (alembic)")
    p.add_argument("--revision", default="head")
    p.set_defaults(func=cmd_migrate)

    p = subparsers.add_parser("remote", help="use a running service")
    p.add_argument("--url", default=None, help="service URL (default $HOSTCP_URL or "
                   "http://127.0.0.1:8000)")
    p.add_argument("--api-key", default=None, help="default $HOSTCP_API_KEY")
    remote = p.add_subparsers(dest="remote_command", required=True)
    r = remote.add_parser("upload", help="upload a dataset; prints its JSON")
    r.add_argument("file", help="a file, or sample:train / sample:test")
    _dataset_options(r)
    r.set_defaults(func=cmd_remote_upload)
    r = remote.add_parser("submit", help="start a job; prints its JSON")
    r.add_argument("--train", required=True, help="training dataset id")
    r.add_argument("--test", required=True, help="test dataset id")
    _job_options(r)
    r.set_defaults(func=cmd_remote_submit)
    r = remote.add_parser("wait", help="wait for a job with a progress bar")
    r.add_argument("job_id")
    r.add_argument("--timeout", type=float, default=None)
    r.set_defaults(func=cmd_remote_wait)
    r = remote.add_parser("download", help="download a result table")
    r.add_argument("job_id")
    r.add_argument("--kind", choices=("subset", "values", "mislabels", "curves"),
                   default="values")
    r.add_argument("--format", choices=("csv", "parquet", "json"), default="csv")
    r.add_argument("-o", "--out", default="-", help="file (default: stdout)")
    r.set_defaults(func=cmd_remote_download)
    r = remote.add_parser("value", help="upload, submit, wait and download in one go")
    r.add_argument("--train", required=True, help="training file (or sample:train)")
    r.add_argument("--test", required=True, help="test file (or sample:test)")
    _dataset_options(r)
    _job_options(r)
    r.add_argument("--out", required=True, help="directory for the four result CSVs")
    r.set_defaults(func=cmd_remote_value)


def _dataset_options(p) -> None:
    p.add_argument("--label-column", default=None)
    p.add_argument("--id-column", default=None)
    p.add_argument("--format", dest="data_format", default=None,
                   choices=("csv", "parquet", "npz", "libsvm"))


def _job_options(p) -> None:
    p.add_argument("--method", default=None,
                   help="default: recommended (compare when --methods is given)")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="compare these methods in one job (method 'compare')")
    p.add_argument("--inject-flips", type=float, default=None, metavar="FRACTION",
                   help="comparison jobs: flip this share of the training labels first")
    p.add_argument("--fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="method parameter (VALUE parsed as JSON when it can be)")
    p.add_argument("--evaluation", choices=("quick", "full", "none"), default=None,
                   help="how the job evaluates its subset (the service's default: quick)")
    p.add_argument("--flag-precision", type=float, default=None, metavar="P",
                   help="flag the mislabels whose expected precision reaches P")


def _params(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--param {pair!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


# --- server side ---

def cmd_serve(args) -> int:
    import uvicorn

    from app.core.config import get_settings

    settings = get_settings()
    workers = args.workers or settings.api_workers
    if workers < 1:
        raise SystemExit("--workers / HOSTCP_API_WORKERS must be at least 1")
    print(f"hostcp: {'embedded' if settings.embedded else 'server'} mode, database "
          f"{_safe_url(settings.db_url)}, {workers} API process(es); docs at "
          f"http://{args.host}:{args.port}/docs", file=sys.stderr)
    if workers == 1:
        uvicorn.run("app.main:create_app", factory=True, host=args.host, port=args.port)
        return 0
    runner = _prepare_workers(settings)
    try:
        from app.serving import run_processes

        run_processes(workers, args.host, args.port)
    finally:
        if runner is not None:
            runner.stop()
    return 0


def _prepare_workers(settings):
    """Before several API processes start (spawned by uvicorn, each reading the environment):

    - migrate once here, so that the processes do not race to create the SQLite schema;
    - metrics: prometheus_client's multiprocess mode, in a directory wiped at each start;
    - embedded mode: ONE runner for all of them, started and supervised here (restarted if it
      dies). The API processes get HOSTCP_EMBEDDED_RUNNER=false, so their /readyz checks the
      database only; a submit no longer wakes the runner, which finds the job at its next poll
      (HOSTCP_RUNNER_POLL_S). SQLite is in WAL mode with a busy timeout (app/db/session.py),
      so readers in several processes do not block one another and writers wait their turn.
    """
    import os
    import shutil
    import threading

    from app.db.migrate import ensure_schema

    ensure_schema(settings)
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or str(
        settings.data_dir / "prometheus")
    shutil.rmtree(metrics_dir, ignore_errors=True)
    os.makedirs(metrics_dir, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    if not (settings.embedded and settings.embedded_runner):
        return None
    from worker.runner import InProcessRunner

    os.environ["HOSTCP_EMBEDDED_RUNNER"] = "false"
    runner = InProcessRunner(settings).start()
    stopping = threading.Event()
    lock = threading.Lock()  # a restart never races the final stop

    def supervise() -> None:
        while not stopping.wait(2.0):
            with lock:
                if not stopping.is_set() and not runner.is_alive():
                    print("hostcp: the embedded runner died; starting a new one",
                          file=sys.stderr)
                    runner.start()  # a job it held is picked up again once its lease expires

    threading.Thread(target=supervise, name="hostcp-runner-supervisor", daemon=True).start()

    class Supervised:
        def stop(self) -> None:
            stopping.set()
            with lock:
                runner.stop()

    return Supervised()


def cmd_worker(args) -> int:
    from app.core.config import get_settings

    settings = get_settings()
    if settings.embedded:
        import threading

        from app.db.migrate import ensure_schema
        from worker.runner import serve_forever

        ensure_schema(settings)
        print("hostcp worker: no HOSTCP_BROKER_URL; running the embedded runner here",
              file=sys.stderr)
        stop = threading.Event()
        try:
            serve_forever(settings, wake_wait=stop.wait, clear=lambda: None,
                          stopping=stop.is_set)
        except KeyboardInterrupt:
            stop.set()
        return 0
    from worker.celery_app import get_celery

    queue = settings.queue_gpu if args.queue == "gpu" else settings.queue_cpu
    argv = ["worker", "-Q", queue, "-c", str(args.concurrency), "--pool", "prefork",
            "--loglevel", args.loglevel, "-n", f"{args.queue}@%h", "--without-gossip",
            "--without-mingle"]
    if args.queue == "gpu":  # recycle processes to give GPU memory back
        argv += ["--max-tasks-per-child", str(settings.gpu_max_tasks_per_child)]
    get_celery(settings).worker_main(argv)
    return 0


def cmd_keys_create(args) -> int:
    from app.core.config import get_settings
    from app.db import repo
    from app.db.migrate import ensure_schema
    from app.db.session import session_scope

    settings = get_settings()
    ensure_schema(settings)
    with session_scope(settings) as s:
        key, token = repo.create_api_key(s, name=args.name)
    print(token)
    print(f"(key {key.prefix!r} named {args.name!r}; it is shown only once)", file=sys.stderr)
    return 0


def cmd_migrate(args) -> int:
    from app.core.config import get_settings
    from app.db.migrate import upgrade

    settings = get_settings()
    upgrade(settings, args.revision)
    print(f"database {_safe_url(settings.db_url)} at {args.revision}", file=sys.stderr)
    return 0


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# --- client side ---

def _resolve(path: str) -> Path:
    """``sample:train`` / ``sample:test`` name the sample dataset bundled with hostcp_core."""
    if path.startswith("sample:"):
        from importlib.resources import files

        return Path(str(files("hostcp_core") / "sample_data" / f"{path[7:]}.csv"))
    return Path(path)


def _client(args):
    from app.client import HostcpClient

    return HostcpClient(args.url, api_key=args.api_key)


def _print(obj) -> None:
    print(json.dumps(obj, indent=2))


def _guard(fn):
    def run(args) -> int:
        from app.client import ApiError, JobFailed

        try:
            return fn(args)
        except ApiError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except JobFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 3
    return run


@_guard
def cmd_remote_upload(args) -> int:
    with _client(args) as c:
        _print(c.upload_dataset(_resolve(args.file), label_column=args.label_column,
                                id_column=args.id_column, format=args.data_format))
    return 0


def _job_fields(args) -> dict:
    return dict(method=args.method, fraction=args.fraction, seed=args.seed,
                params=_params(args.param), methods=args.methods,
                inject_flips=args.inject_flips, evaluation=args.evaluation,
                flag_precision=args.flag_precision)


@_guard
def cmd_remote_submit(args) -> int:
    with _client(args) as c:
        _print(c.submit_job(args.train, args.test, **_job_fields(args)))
    return 0


@_guard
def cmd_remote_wait(args) -> int:
    with _client(args) as c:
        _print(c.wait(args.job_id, timeout=args.timeout, progress=True))
    return 0


@_guard
def cmd_remote_download(args) -> int:
    with _client(args) as c:
        data = c.download(args.job_id, args.kind, format=args.format)
    if args.out == "-":
        sys.stdout.buffer.write(data)
    else:
        Path(args.out).write_bytes(data)
    return 0


@_guard
def cmd_remote_value(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with _client(args) as c:
        opts = dict(label_column=args.label_column, id_column=args.id_column,
                    format=args.data_format)
        train = c.upload_dataset(_resolve(args.train), **opts)
        test = c.upload_dataset(_resolve(args.test), **opts)
        job = c.submit_job(train["id"], test["id"], **_job_fields(args))
        print(f"job {job['id']} queued", file=sys.stderr)
        job = c.wait(job["id"], progress=True)
        for kind in ("subset", "values", "mislabels", "curves"):
            (out / f"{kind}.csv").write_bytes(c.download(job["id"], kind, format="csv"))
        (out / "job.json").write_text(json.dumps(job, indent=2))
    n_sel = job["summary"]["n_selected"]
    print(f"job {job['id']} succeeded: {n_sel} of {job['summary']['n_train']} points selected; "
          f"results in {out}/", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hostcp", description="Data valuation with HOST-CP "
                                     "and the strongest data valuers.")
    sub = parser.add_subparsers(dest="command", required=True)
    library_cli.register(sub)
    register(sub)
    cli_dashboards.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return library_cli.run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
