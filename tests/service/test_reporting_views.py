"""Reporting views for dashboards (docs/dashboards.md): on SQLite and on the real Postgres.

A "world" is a migrated database holding finished jobs run through the HTTP API and the
embedded runner: for key team-a a single-method job and a comparison job (two methods,
injected flips), for key team-b one more job. Every figure a view shows is checked against the
API's downloads of the same job; on Postgres a granted dashboard role is checked to read the
views, only its key's rows, and nothing else. The example queries are parsed out of
docs/dashboards.md and run, so the doc and this test cannot drift."""

from __future__ import annotations

import argparse
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from service_helpers import service_settings, upload, wait_for, write_csv_pair
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from app.core.config import Settings, configure
from app.db import reporting
from app.db.migrate import alembic_config, upgrade
from app.db.session import dispose_engines, get_engine, session_scope

pytestmark = pytest.mark.timeout(300)

DOC = Path(__file__).resolve().parents[2] / "docs" / "dashboards.md"
COMPARED = ["knn_shapley", "random"]
SINGLE = "knn_shapley"
# the fractions comparison_v1 reads (5/20/50/100 %) are on the curves
CURVE_FRACTIONS = (0.05, 0.2, 0.5, 1.0)
ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@dataclass
class World:
    settings: Settings
    single: dict
    compare: dict
    other: dict  # team-b's job
    downloads: dict = field(default_factory=dict)  # job id -> what the API gave

    @property
    def dialect(self) -> str:
        return get_engine(self.settings).dialect.name

    def view(self, name: str) -> str:
        return reporting.view_name(name, self.dialect)


def _pages(client, headers, url: str, **params) -> list[dict]:
    items, token = [], None
    while True:
        q = {"page_size": 1000, **params, **({"page_token": token} if token else {})}
        r = client.get(url, headers=headers, params=q)
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        token = body["next_page_token"]
        if not token:
            return items


def _downloads(client, h, job: dict) -> dict:
    base = f"/v1/jobs/{job['id']}"
    out = {"job": client.get(base, headers=h).json(),
           "mislabels": _pages(client, h, f"{base}/mislabels"),
           "curves": _pages(client, h, f"{base}/curves"), "values": {}, "subset": {}}
    for m in job["methods"] or [job["method"]]:
        params = {"method": m} if job["methods"] else {}
        out["values"][m] = _pages(client, h, f"{base}/values", **params)
        out["subset"][m] = _pages(client, h, f"{base}/subset", **params)
    return out


def _key(settings: Settings, name: str) -> dict[str, str]:
    from app.db import repo

    with session_scope(settings) as s:
        _, token = repo.create_api_key(s, name=name)
    return {"Authorization": f"Bearer {token}"}


def _build_world(s: Settings, tmp: Path) -> World:
    """Finished jobs, run through the API and the embedded runner (no worker internals)."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    upgrade(s)  # what `hostcp migrate` runs
    configure(s)
    try:
        with TestClient(create_app(s)) as client:
            ha, hb = _key(s, "team-a"), _key(s, "team-b")
            train_path, test_path = write_csv_pair(tmp, n_train=80, n_test=40, seed=3)
            ids = {}
            for who, h in (("a", ha), ("b", hb)):
                ids[who] = (upload(client, h, train_path, id_column="row_id")["id"],
                            upload(client, h, test_path, id_column="row_id")["id"])

            def submit(h, who, **body):
                r = client.post("/v1/jobs", headers=h, json={
                    "train_dataset_id": ids[who][0], "test_dataset_id": ids[who][1],
                    "fraction": 0.2, "seed": 1, **body})
                assert r.status_code == 202, r.text
                return r.json()["id"]

            single = submit(ha, "a", method=SINGLE)
            compare = submit(ha, "a", method="compare", methods=COMPARED, inject_flips=0.1)
            other = submit(hb, "b", method="random")
            jobs = {}
            for job_id, h in ((single, ha), (compare, ha), (other, hb)):
                jobs[job_id] = wait_for(client, h, job_id, timeout=150)
                assert jobs[job_id]["status"] == "succeeded", jobs[job_id]
            world = World(s, jobs[single], jobs[compare], jobs[other])
            for job_id, h in ((single, ha), (compare, ha), (other, hb)):
                world.downloads[job_id] = _downloads(client, h, jobs[job_id])
    finally:
        configure(None)
    return world


def _settings(tmp: Path, **kw) -> Settings:
    return service_settings(tmp / "data", curve_fractions=CURVE_FRACTIONS, **kw)


@pytest.fixture(scope="module")
def sqlite_world(tmp_path_factory) -> World:
    tmp = tmp_path_factory.mktemp("reporting_sqlite")
    yield _build_world(_settings(tmp), tmp)
    dispose_engines()


def _new_database():
    """A new empty Postgres database (skips without the server): the admin engine and its
    name; the caller drops it."""
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"hostcp_rep_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.skip(f"Postgres not reachable at {ADMIN_URL}: {type(exc).__name__}")
    return admin, name


@pytest.fixture(scope="module")
def pg_server():
    """A fresh Postgres database (skips without the server) and the roles made in it."""
    admin, name = _new_database()
    roles: list[str] = []
    yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", roles
    dispose_engines()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        for role in roles:  # roles are per cluster; their privileges went with the database
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
    admin.dispose()


@pytest.fixture(scope="module")
def pg_world(pg_server, tmp_path_factory) -> World:
    url, _ = pg_server
    tmp = tmp_path_factory.mktemp("reporting_pg")
    return _build_world(_settings(tmp, database_url=url), tmp)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request) -> World:
    return request.getfixturevalue(
        {"sqlite": "sqlite_world", "postgres": "pg_world"}[request.param])


def _rows(world: World, sql: str, **params) -> list[dict]:
    with get_engine(world.settings).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(sql), params)]


def _role_url(world: World, role: str) -> str:
    url = world.settings.database_url
    return url.replace("postgres@", f"{role}@", 1)


def _cli(settings: Settings, argv: list[str]) -> int:
    """`hostcp dashboards ...` through register() on a fresh parser."""
    from app.cli_dashboards import register

    parser = argparse.ArgumentParser(prog="hostcp")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    configure(settings)
    try:
        return args.func(args)
    finally:
        configure(None)


def _role(pg_server) -> str:
    role = f"dash_{uuid.uuid4().hex[:10]}"
    pg_server[1].append(role)
    return role


# --- the doc -----------------------------------------------------------------------------

def _doc_columns() -> dict[str, list[tuple[str, str]]]:
    """Each view's documented (column, type) rows, in order."""
    out, current = {}, None
    for line in DOC.read_text().splitlines():
        m = re.match(r"^### `(\w+_v\d+)`", line)
        if m:
            current = out.setdefault(m.group(1), [])
            continue
        m = re.match(r"^\| `(\w+)` \| ([\w ]+) \|", line)
        if m and current is not None:
            current.append((m.group(1), m.group(2).strip()))
    return out


def _doc_queries(dialect: str) -> list[str]:
    blocks = re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.S)
    marker = "reporting." if dialect == "postgresql" else "reporting_"
    return [b.strip().rstrip(";") for b in blocks if marker in b]


# --- every view, on both databases ----------------------------------------------------------

def test_every_view_exists_after_migrate_with_the_documented_columns(world):
    with get_engine(world.settings).connect() as conn:
        assert reporting.existing_views(conn) == sorted(reporting.VIEWS)
    documented = _doc_columns()
    assert sorted(documented) == sorted(reporting.VIEWS)
    pg_types = {"varchar": "character varying", "timestamptz": "timestamp with time zone"}
    for view in reporting.VIEWS:
        with get_engine(world.settings).connect() as conn:
            cols = list(conn.execute(text(f"SELECT * FROM {world.view(view)} LIMIT 0")).keys())
        assert cols == [c for c, _ in documented[view]], view
        if world.dialect == "postgresql":
            types = _rows(world, "SELECT column_name, data_type FROM information_schema.columns "
                          "WHERE table_schema = 'reporting' AND table_name = :v "
                          "ORDER BY ordinal_position", v=view)
            assert [(t["column_name"], t["data_type"]) for t in types] == [
                (c, pg_types.get(t, t)) for c, t in documented[view]], view


def _dt(value) -> datetime:
    if isinstance(value, str):  # SQLite: naive UTC text; the API: ISO with a zone
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def test_jobs_view_equals_the_api(world):
    from app.db.models import Job

    rows = {r["job_id"]: r for r in _rows(world, f"SELECT * FROM {world.view('jobs_v1')}")}
    assert set(rows) == {world.single["id"], world.compare["id"], world.other["id"]}
    for job_id, row in rows.items():
        job = world.downloads[job_id]["job"]
        with session_scope(world.settings) as s:
            expected_errors = s.get(Job, job_id).expected_label_errors
        assert row["key_name"] == ("team-b" if job_id == world.other["id"] else "team-a")
        assert row["method"] == job["method"]
        assert row["methods"] == ",".join(job["methods"] or [job["method"]])
        for col in ("status", "stage", "progress", "fraction", "seed", "attempts", "queue",
                    "inject_flips"):
            assert row[col] == job[col], col
        for col in ("created_at", "started_at", "finished_at"):
            assert _dt(row[col]) == _dt(job[col]), col
        assert row["run_time_s"] == job["timings"]["total_s"] > 0
        started, created = _dt(job["started_at"]), _dt(job["created_at"])
        assert row["wait_s"] == pytest.approx((started - created).total_seconds(), abs=1e-3)
        for col in ("n_train", "n_selected", "n_suspected"):
            assert row[col] == job["summary"][col], col
        assert row["expected_label_errors"] == job["expected_label_errors"] == expected_errors
        assert row["error_title"] is None
    # the comparison is not vacuous: the mislabel report gives the estimate
    assert all(r["expected_label_errors"] is not None for r in rows.values())


def _same_points(view_rows: list[dict], api_items: list[dict], with_selected: bool) -> None:
    assert len(view_rows) == len(api_items) > 0
    for v, a in zip(view_rows, api_items, strict=True):
        got = {"index": v["point_index"], "id": v["point_id"], "score": v["score"],
               "rank": v["value_rank"], "label": v["label"]}
        if with_selected:
            got["selected"] = bool(v["selected"])
        assert got == a


def test_points_view_equals_values_and_subset_downloads(world):
    for job in (world.single, world.compare, world.other):
        d = world.downloads[job["id"]]
        methods = job["methods"] or [job["method"]]
        listed = _rows(world, f"SELECT DISTINCT method FROM {world.view('points_v1')} "
                       "WHERE job_id = :j", j=job["id"])
        assert sorted(r["method"] for r in listed) == sorted(methods)
        for m in methods:
            rows = _rows(world, f"SELECT * FROM {world.view('points_v1')} WHERE job_id = :j "
                         "AND method = :m ORDER BY point_index", j=job["id"], m=m)
            _same_points(rows, d["values"][m], with_selected=True)
            selected = [r for r in rows if r["selected"]]
            _same_points(selected, d["subset"][m], with_selected=False)


def test_mislabels_view_equals_the_mislabel_download(world):
    from sqlalchemy import select

    from app.db.models import PointResult

    for job in (world.single, world.compare, world.other):
        rows = _rows(world, f"SELECT * FROM {world.view('mislabels_v1')} WHERE job_id = :j "
                     "ORDER BY mislabel_rank", j=job["id"])
        api = world.downloads[job["id"]]["mislabels"]
        assert len(rows) == len(api) == job["summary"]["n_train"]
        assert {r["method"] for r in rows} == {(job["methods"] or [job["method"]])[0]}
        with session_scope(world.settings) as s:
            stored = {p.point_index: p for p in s.scalars(
                select(PointResult).where(PointResult.job_id == job["id"]))}
        for v, a in zip(rows, api, strict=True):
            assert {"index": v["point_index"], "id": v["point_id"],
                    "given_label": v["given_label"], "suggested_label": v["suggested_label"],
                    "score": v["mislabel_score"], "rank": v["mislabel_rank"],
                    "suspected": bool(v["suspected"])} == {k: a[k] for k in (
                        "index", "id", "given_label", "suggested_label", "score", "rank",
                        "suspected")}
            # the calibrated probabilities, as downloaded and as stored
            p = stored[v["point_index"]]
            for col in ("suggested_prob", "label_error_prob"):
                assert v[col] == a[col] == getattr(p, col), col
        assert sum(bool(r["suspected"]) for r in rows) == job["summary"]["n_suspected"]
        assert all(r["label_error_prob"] is not None and r["suggested_prob"] is not None
                   for r in rows)  # not vacuous: the report gives them


def test_curves_view_equals_the_curves_download(world):
    for job in (world.single, world.compare, world.other):
        rows = _rows(world, f"SELECT * FROM {world.view('curves_v1')} WHERE job_id = :j",
                     j=job["id"])
        api = world.downloads[job["id"]]["curves"]
        got = []
        for r in rows:
            key = f"{r['method']}:{r['curve']}" if job["methods"] else r["curve"]
            if not job["methods"]:
                assert r["method"] == job["method"]
            value = r["flips_found"] if r["curve"] == "flips" else r["accuracy"]
            # the other column is NULL: a row is one kind of figure
            assert (r["accuracy"] if r["curve"] == "flips" else r["flips_found"]) is None
            got.append({"curve": key, "step": r["step"], "fraction": r["fraction"],
                        "n_points": r["n_points"], "value": value})
        key = lambda c: (c["curve"], c["step"])  # noqa: E731
        assert sorted(got, key=key) == sorted(api, key=key)
        assert len(api) > 0
    curves = {r["curve"] for r in _rows(world, f"SELECT curve FROM {world.view('curves_v1')} "
                                        "WHERE job_id = :j", j=world.compare["id"])}
    assert curves == {"addition", "removal", "flips"}


def test_comparison_view_equals_the_job_summary_and_curves(world):
    job = world.compare
    d = world.downloads[job["id"]]
    rows = _rows(world, f"SELECT * FROM {world.view('comparison_v1')} ORDER BY position")
    assert [r["job_id"] for r in rows] == [job["id"]] * len(COMPARED)  # single jobs: no rows
    records = d["job"]["summary"]["comparison"]["methods"]
    assert [r["method"] for r in rows] == [rec["method"] for rec in records] == COMPARED
    assert [r["position"] for r in rows] == list(range(1, len(COMPARED) + 1))
    for r, rec in zip(rows, records, strict=True):
        for col in ("run_time_s", "curves_s", "n_selected", "flip_roc_auc", "flip_f1", "ndcg"):
            assert r[col] == rec[col] is not None, col
        for pct in (5, 20, 50, 100):
            [acc] = [c["value"] for c in d["curves"]
                     if c["curve"] == f"{rec['method']}:addition" and c["fraction"] == pct / 100]
            assert r[f"accuracy_at_{pct}"] == acc is not None
            # ... and the summary's own copy of the addition curve agrees
            assert acc in [p["accuracy"] for p in rec["addition"]]


def test_the_doc_example_queries_return_rows(world, pg_server_or_none):
    queries = _doc_queries(world.dialect)
    assert len(queries) >= (6 if world.dialect == "postgresql" else 2)
    url = world.settings.db_url
    if world.dialect == "postgresql":  # as a dashboard would: a role granted team-a
        role = _role(pg_server_or_none)
        assert _cli(world.settings, ["dashboards", "grant", "--key", "team-a",
                                     "--role", role]) == 0
        url = _role_url(world, role)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            for q in queries:
                rows = conn.execute(text(q.replace("$job_id", world.compare["id"]))).all()
                assert rows, q
    finally:
        engine.dispose()


@pytest.fixture
def pg_server_or_none(request, world):
    return request.getfixturevalue("pg_server") if world.dialect == "postgresql" else None


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_settings(request, tmp_path) -> Settings:
    """An empty database of each kind, not migrated (Postgres: its own, dropped after)."""
    if request.param == "sqlite":
        yield _settings(tmp_path)
        dispose_engines()
        return
    admin, name = _new_database()
    yield _settings(tmp_path, database_url=ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")
    dispose_engines()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def fresh_settings(empty_settings) -> Settings:
    upgrade(empty_settings)
    return empty_settings


def test_the_hostcp_migrate_command_creates_every_view(empty_settings):
    import os
    import subprocess
    import sys

    s = empty_settings
    env = {**os.environ, "HOSTCP_ENV": "test", "HOSTCP_DATA_DIR": str(s.data_dir),
           "HOSTCP_DATABASE_URL": s.database_url or ""}
    proc = subprocess.run([sys.executable, "-m", "app.cli", "migrate"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with get_engine(s).connect() as conn:
        assert reporting.existing_views(conn) == sorted(reporting.VIEWS)


def test_comparison_and_curves_views_read_the_right_stored_figures(fresh_settings):
    """Stored rows made to differ everywhere (a finished job's accuracies repeat on a small
    holdout, so the API comparison above could not tell 20 % from 50 %): each accuracy_at_N
    is the addition curve's point at N %, a curve key is split into method and curve, and a
    value that is not finite reads as NULL."""
    from app.db.models import ApiKey, CurvePoint, DatasetRecord, Job

    s = fresh_settings
    fractions = [0.05, 0.1, 0.2, 0.3, 0.5, 1.0]
    methods = ["m_one", "m_two"]
    pg = get_engine(s).dialect.name == "postgresql"

    def acc(i: int, kind: str, f: float) -> float:  # distinct per method, curve and fraction
        return round(0.1 * i + (0.05 if kind == "removal" else 0.0) + f / 10, 6)

    with session_scope(s) as db:
        key = ApiKey(name="k", prefix="p0", key_hash="h")
        db.add(key)
        db.flush()
        db.add(DatasetRecord(id="d", owner_id=key.id, name="d", format="csv", sha256="s",
                             content_key="c", size_bytes=1, raw_path="r", array_path="a",
                             n_rows=1, n_features=1, classes=[], class_counts=[]))
        db.flush()
        records = [{"method": m, "run_time_s": 1.5 + i, "curves_s": 0.25, "n_selected": 7,
                    "ndcg": 0.5} for i, m in enumerate(methods)]  # no flips: no AUC or F1
        db.add(Job(id="cmp", owner_id=key.id, train_dataset_id="d", test_dataset_id="d",
                   method="compare", methods=methods, fraction=0.2, queue="cpu",
                   status="succeeded", summary={"comparison": {"methods": records}}))
        db.flush()
        for i, m in enumerate(methods):
            for kind in ("addition", "removal"):
                db.add_all([CurvePoint(job_id="cmp", curve=f"{m}:{kind}", step=j, fraction=f,
                                       n_points=j, value=acc(i, kind, f))
                            for j, f in enumerate(fractions)])
        # not finite: inf (SQLite stores no NaN; Postgres does)
        db.add(CurvePoint(job_id="cmp", curve="m_one:odd", step=0, fraction=0.5, n_points=1,
                          value=float("inf")))
        if pg:
            db.add(CurvePoint(job_id="cmp", curve="m_one:odd", step=1, fraction=0.6,
                              n_points=1, value=float("nan")))

    view = lambda name: reporting.view_name(name, get_engine(s).dialect.name)  # noqa: E731
    with get_engine(s).connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(text(
            f"SELECT * FROM {view('comparison_v1')} ORDER BY position"))]
        curves = [dict(r._mapping) for r in conn.execute(text(
            f"SELECT * FROM {view('curves_v1')} ORDER BY method, curve, step"))]
    assert [r["method"] for r in rows] == methods
    for i, r in enumerate(rows):
        assert (r["run_time_s"], r["curves_s"], r["n_selected"], r["ndcg"]) == (
            1.5 + i, 0.25, 7, 0.5)
        assert r["flip_roc_auc"] is None and r["flip_f1"] is None
        for pct in (5, 20, 50, 100):
            assert r[f"accuracy_at_{pct}"] == acc(i, "addition", pct / 100), (i, pct)
    assert {(c["method"], c["curve"]) for c in curves} == {
        (m, k) for m in methods for k in ("addition", "removal")} | {("m_one", "odd")}
    for c in curves:
        if c["curve"] == "odd":
            assert c["accuracy"] is None and c["flips_found"] is None
        else:
            i = methods.index(c["method"])
            assert c["accuracy"] == acc(i, c["curve"], c["fraction"])
            assert c["flips_found"] is None


# --- isolation on Postgres ------------------------------------------------------------------

def _refused(conn, sql: str, codes: tuple[str, ...] = ("42501",)) -> None:
    """``sql`` fails (42501: lack of privilege), and changes nothing."""
    if conn.in_transaction():  # the reads before it
        conn.rollback()
    with pytest.raises(DBAPIError) as info:
        with conn.begin():
            conn.execute(text(sql))
    assert info.value.orig.sqlstate in codes, (sql, info.value)


def _job_ids(conn, view: str) -> set[str]:
    return {r[0] for r in conn.execute(text(f"SELECT job_id FROM reporting.{view}"))}


@pytest.mark.postgres
def test_a_dashboard_role_reads_only_its_keys_rows_through_the_views_and_nothing_else(
        pg_world, pg_server):
    w = pg_world
    role = _role(pg_server)
    assert _cli(w.settings, ["dashboards", "grant", "--key", "team-a", "--role", role,
                             "--password", "s3cret'quote"]) == 0
    owner = get_engine(w.settings)
    with owner.connect() as conn:  # the password was set (trust auth here never asks for it)
        assert conn.execute(text("SELECT rolpassword IS NOT NULL AND rolcanlogin FROM pg_authid "
                                 "WHERE rolname = :r"), {"r": role}).scalar_one()
    team_a = {w.single["id"], w.compare["id"]}
    engine = create_engine(_role_url(w, role))
    try:
        with engine.connect() as conn:
            for view in reporting.VIEWS:
                ids = _job_ids(conn, view)
                assert ids and ids <= team_a, view  # its key's rows, never team-b's
            assert _job_ids(conn, "jobs_v1") == team_a
            for table in reporting.BASE_TABLES:
                _refused(conn, f"SELECT * FROM {table} LIMIT 1")
            # writing to a view: Postgres may first say it is not updatable (55000); either
            # way the role holds no write privilege on any view
            for sql in ("INSERT INTO reporting.jobs_v1 (job_id) VALUES ('x')",
                        "UPDATE reporting.jobs_v1 SET status = 'failed'",
                        "DELETE FROM reporting.points_v1"):
                _refused(conn, sql, ("42501", "55000"))
            for view in reporting.VIEWS:
                for priv in ("INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"):
                    assert not conn.execute(text(
                        "SELECT has_table_privilege(CAST(:v AS regclass), :p)"),
                        {"v": f"reporting.{view}", "p": priv}).scalar_one(), (view, priv)
                assert conn.execute(text("SELECT has_table_privilege(CAST(:v AS regclass), "
                                         "'SELECT')"), {"v": f"reporting.{view}"}).scalar_one()
            _refused(conn, "UPDATE jobs SET status = 'failed'")
            _refused(conn, "DELETE FROM job_points")
            _refused(conn, "INSERT INTO dashboard_grants (role_name, key_id, created_at) "
                     f"VALUES ('{role}', 2, now())")
            _refused(conn, "CREATE TABLE public.mine (a int)")
            _refused(conn, "CREATE VIEW reporting.mine AS SELECT 1 AS a")
        # the service's own connection (the tables' owner) is unaffected, and sees every key
        with owner.connect() as conn:
            assert _job_ids(conn, "jobs_v1") == team_a | {w.other["id"]}
            assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 3

        # a second role for team-b sees team-b's job only
        other = _role(pg_server)
        assert _cli(w.settings, ["dashboards", "grant", "--key", "team-b", "--role", other]) == 0
        other_engine = create_engine(_role_url(w, other))
        with other_engine.connect() as conn:
            assert _job_ids(conn, "jobs_v1") == {w.other["id"]}
            assert _job_ids(conn, "points_v1") == {w.other["id"]}
        other_engine.dispose()

        # revoking the last key takes the rows and then the privileges away
        assert _cli(w.settings, ["dashboards", "revoke", "--role", role, "--key", "team-a"]) == 0
        with engine.connect() as conn:
            _refused(conn, "SELECT * FROM reporting.jobs_v1")
        assert reporting.list_grants(w.settings, role) == []
        engine.dispose()
        assert _cli(w.settings, ["dashboards", "revoke", "--role", role, "--drop-role"]) == 0
        with owner.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM pg_roles WHERE rolname = :r"),
                                {"r": role}).scalar_one() == 0
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_member_of_a_granted_role_sees_its_rows(pg_world, pg_server):
    w = pg_world
    group, member = _role(pg_server), _role(pg_server)
    assert _cli(w.settings, ["dashboards", "grant", "--key", "team-b", "--role", group]) == 0
    with get_engine(w.settings).begin() as conn:
        conn.execute(text(f'CREATE ROLE "{member}" LOGIN IN ROLE "{group}"'))
    engine = create_engine(_role_url(w, member))
    try:
        with engine.connect() as conn:
            assert _job_ids(conn, "jobs_v1") == {w.other["id"]}
            _refused(conn, "SELECT * FROM jobs")
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_readers_own_function_never_sees_other_keys_rows(pg_world, pg_server):
    """security_barrier: a cheap function in the reader's WHERE clause would otherwise run
    before the key filter and could leak every row (here through NOTICEs). The same view
    without the barrier shows that the check can fail."""
    w = pg_world
    role = _role(pg_server)
    assert _cli(w.settings, ["dashboards", "grant", "--key", "team-b", "--role", role]) == 0
    with get_engine(w.settings).begin() as conn:  # the owner makes a barrier-less copy
        body = conn.execute(text("SELECT pg_get_viewdef('reporting.jobs_v1'::regclass)")
                            ).scalar_one()
        conn.execute(text("CREATE SCHEMA probe"))
        conn.exec_driver_sql(f"CREATE VIEW probe.jobs_no_barrier AS {body}")
        conn.execute(text(f'GRANT USAGE ON SCHEMA probe TO "{role}"'))
        conn.execute(text(f'GRANT SELECT ON probe.jobs_no_barrier TO "{role}"'))
    engine = create_engine(_role_url(w, role))
    seen: list[str] = []
    try:
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            raw.add_notice_handler(lambda diag: seen.append(diag.message_primary))
            conn.exec_driver_sql(
                "CREATE FUNCTION pg_temp.peek(t text) RETURNS boolean LANGUAGE plpgsql "
                "COST 0.0000001 AS $$ BEGIN RAISE NOTICE 'seen %%', t; RETURN true; END $$")
            rows = conn.execute(text("SELECT job_id FROM reporting.jobs_v1 "
                                     "WHERE pg_temp.peek(job_id)")).all()
            assert [r[0] for r in rows] == [w.other["id"]]
            assert seen and all(w.other["id"] in m for m in seen), seen
            seen.clear()
            conn.execute(text("SELECT job_id FROM probe.jobs_no_barrier "
                              "WHERE pg_temp.peek(job_id)")).all()
            assert any(w.single["id"] in m for m in seen), seen  # the leak the barrier stops
    finally:
        engine.dispose()
        with get_engine(w.settings).begin() as conn:
            conn.execute(text("DROP SCHEMA probe CASCADE"))


@pytest.mark.postgres
def test_grant_refuses_unknown_keys_and_roles_that_could_read_more(pg_world, pg_server,
                                                                    capsys):
    w = pg_world
    assert _cli(w.settings, ["dashboards", "grant", "--key", "nobody", "--role",
                             _role(pg_server)]) == 2
    assert "no API key named 'nobody'" in capsys.readouterr().err
    assert _cli(w.settings, ["dashboards", "grant", "--key", "team-a", "--role",
                             "postgres"]) == 2
    assert "SUPERUSER" in capsys.readouterr().err
    reader = _role(pg_server)
    with get_engine(w.settings).begin() as conn:
        conn.execute(text(f'CREATE ROLE "{reader}" LOGIN'))
        conn.execute(text(f'GRANT SELECT ON job_points TO "{reader}"'))
    assert _cli(w.settings, ["dashboards", "grant", "--key", "team-a", "--role", reader]) == 2
    assert "SELECT on table job_points" in capsys.readouterr().err
    assert reporting.list_grants(w.settings, reader) == []
    assert _cli(w.settings, ["dashboards", "grant", "--key", "team-a", "--role",
                             "bad name"]) == 2
    # all or nothing: one unknown key of several grants none and creates no role
    role = _role(pg_server)
    assert _cli(w.settings, ["dashboards", "grant", "--key", "team-a", "--key", "nobody",
                             "--role", role]) == 2
    assert reporting.list_grants(w.settings, role) == []
    with get_engine(w.settings).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM pg_roles WHERE rolname = :r"),
                            {"r": role}).scalar_one() == 0


@pytest.mark.postgres
def test_list_names_the_granted_keys(pg_world, pg_server, capsys):
    w = pg_world
    role = _role(pg_server)
    assert _cli(w.settings, ["dashboards", "grant", "--key", "team-a", "--key", "team-b",
                             "--role", role]) == 0
    capsys.readouterr()
    assert _cli(w.settings, ["dashboards", "list", "--role", role]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t") == ["role", "key_name", "key_prefix", "granted_at"]
    assert [line.split("\t")[:2] for line in lines[1:]] == [[role, "team-a"], [role, "team-b"]]
    assert _cli(w.settings, ["dashboards", "views"]) == 0
    assert capsys.readouterr().out.split() == [f"reporting.{v}" for v in sorted(reporting.VIEWS)]


def test_on_sqlite_grant_refuses_and_says_why(sqlite_world, capsys):
    s = sqlite_world.settings
    assert _cli(s, ["dashboards", "grant", "--key", "team-a", "--role", "grafana"]) == 2
    assert "Postgres only" in capsys.readouterr().err
    assert _cli(s, ["dashboards", "views"]) == 0
    assert capsys.readouterr().out.split() == [f"reporting_{v}" for v in sorted(reporting.VIEWS)]


# --- migrations ------------------------------------------------------------------------------

def test_suspend_views_lets_a_sqlite_batch_migration_rebuild_a_table_behind_them(
        sqlite_world, tmp_path):
    """On a copy of the SQLite world: a batch rebuild of ``jobs`` (what batch mode does for
    most changes, e.g. drop_column) fails under the views; inside suspend_views, on a
    connection with foreign keys off, it passes and every view shows the same rows. With
    foreign keys on, suspend_views refuses: the rebuild's DROP TABLE would cascade-delete
    every job's points and curves."""
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import Column, Integer

    s = _copy_of(sqlite_world, tmp_path)
    engine = get_engine(s)

    def rebuild_jobs(conn) -> None:
        ops = Operations(MigrationContext.configure(conn))
        with ops.batch_alter_table("jobs", recreate="always") as batch:
            batch.add_column(Column("spare", Integer))

    before = _contents(s)
    assert all(before.values())
    with pytest.raises(DBAPIError, match="error in view reporting_"):
        with engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA foreign_keys = OFF")
            rebuild_jobs(conn)
    dispose_engines()  # no pooled connection keeps foreign keys off
    with engine.connect() as conn:  # the failed attempt left its copy behind
        conn.exec_driver_sql("DROP TABLE IF EXISTS _alembic_tmp_jobs")
        conn.commit()
    with pytest.raises(reporting.ReportingError, match="foreign_keys is on"):
        with engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA foreign_keys = ON")  # as the service's connections
            with reporting.suspend_views(conn):
                rebuild_jobs(conn)
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys = OFF")  # before any write
        with reporting.suspend_views(conn):
            rebuild_jobs(conn)
        assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
        conn.exec_driver_sql("PRAGMA foreign_keys = ON")  # the pooled connection lives on
    with engine.connect() as conn:
        assert reporting.existing_views(conn) == sorted(reporting.VIEWS)
        assert "spare" in [c[1] for c in conn.exec_driver_sql("PRAGMA table_info(jobs)")]
    assert _contents(s) == before
    dispose_engines()


@pytest.mark.postgres
def test_autogenerate_finds_no_difference_on_postgres(pg_world):
    from test_migrations import autogenerate_diff

    assert autogenerate_diff(pg_world.settings) == []


# the view columns whose base columns a downgrade below 0003 drops (so their values go)
SINCE_0003 = {"expected_label_errors", "suggested_prob", "label_error_prob"}


def _contents(settings: Settings, without: set[str] = frozenset()) -> dict[str, list]:
    """Every row of every view, in a comparable form (less the columns ``without``)."""
    engine = get_engine(settings)
    out = {}
    with engine.connect() as conn:
        for v in reporting.VIEWS:
            result = conn.execute(text(
                f"SELECT * FROM {reporting.view_name(v, engine.dialect.name)}"))
            keep = [i for i, c in enumerate(result.keys()) if c not in without]
            out[v] = sorted((tuple(row[i] for i in keep) for row in result), key=repr)
    return out


def _copy_of(world: World, tmp_path: Path) -> Settings:
    """Settings on a copy of the SQLite world's database file (tests that break it)."""
    import shutil

    src = get_engine(world.settings)
    with src.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    s = _settings(tmp_path)
    s.data_dir.mkdir(parents=True)
    shutil.copy(src.url.database, s.data_dir / "hostcp.db")
    return s


def test_a_downgrade_upgrade_round_trip_keeps_the_views(world):
    """Last in this module: the downgrade drops the grants with the views."""
    from alembic import command

    before = _contents(world.settings)
    assert all(before.values())
    command.downgrade(alembic_config(world.settings), "0003")
    with get_engine(world.settings).connect() as conn:
        assert reporting.existing_views(conn) == []
    command.upgrade(alembic_config(world.settings), "head")
    with get_engine(world.settings).connect() as conn:
        assert reporting.existing_views(conn) == sorted(reporting.VIEWS)
    assert _contents(world.settings) == before


def test_a_sqlite_round_trip_below_0003_keeps_every_row(sqlite_world, tmp_path):
    from alembic import command

    s = _copy_of(sqlite_world, tmp_path)
    before = _contents(s, without=SINCE_0003)
    command.downgrade(alembic_config(s), "0002")
    command.upgrade(alembic_config(s), "head")
    after = _contents(s, without=SINCE_0003)
    dispose_engines()
    assert after == before


def test_with_foreign_keys_off_a_sqlite_round_trip_below_0003_keeps_every_row(sqlite_world,
                                                                              tmp_path):
    """The fix proposed for migrations/env.py: foreign keys off on the migrating connection
    (set before its transaction begins), then the same round trip keeps every row."""
    from alembic import command

    s = _copy_of(sqlite_world, tmp_path)

    def migrate(step, revision: str) -> None:
        cfg = alembic_config(s)
        with get_engine(s).begin() as conn:
            conn.exec_driver_sql("PRAGMA foreign_keys = OFF")  # a no-op once a write began
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 0
            cfg.attributes["connection"] = conn
            step(cfg, revision)
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
        dispose_engines()  # no pooled connection keeps foreign keys off

    before = _contents(s, without=SINCE_0003)
    assert all(before.values())
    migrate(command.downgrade, "0002")
    migrate(command.upgrade, "head")
    assert _contents(s, without=SINCE_0003) == before
