"""Isolation and secrets: for every /v1 endpoint, another key can neither list, read, download
nor cancel; keys are stored hashed and compared with hmac.compare_digest; an internal error
reaches the client as a bare problem+json, never with a traceback."""

from __future__ import annotations

import re
import uuid

import pytest
from reliability_helpers import make_key
from service_helpers import FAST_METHOD, assert_problem, service_settings, upload, wait_for
from sqlalchemy import select

from app.core.config import configure
from app.db.models import ApiKey
from app.db.session import session_scope

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def client(settings):
    from fastapi.testclient import TestClient

    from app.main import create_app

    # server errors come back as responses (as a real client would see them)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def bare_client(tmp_path):
    """The app without its runner: for checks that need no job to run."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    s = service_settings(tmp_path / "bare", embedded_runner=False)
    configure(s)
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        yield c, s
    configure(None)


@pytest.fixture
def alice(client, settings, csv_pair) -> dict:
    """A key with two datasets and a finished job."""
    h, token = make_key(settings, "alice")
    train = upload(client, h, csv_pair[0], id_column="row_id")
    test = upload(client, h, csv_pair[1], id_column="row_id")
    r = client.post("/v1/jobs", headers=h, json={"train_dataset_id": train["id"],
                                                 "test_dataset_id": test["id"],
                                                 "method": FAST_METHOD, "fraction": 0.3})
    assert r.status_code == 202, r.text
    job = wait_for(client, h, r.json()["id"])
    assert job["status"] == "succeeded", job
    return {"h": h, "token": token, "train": train, "test": test, "job": job}


def _v1_routes(app) -> list[tuple[str, str]]:
    """Every /v1 operation, as the OpenAPI document lists them (new routes are included)."""
    paths = app.openapi()["paths"]
    return [(m.upper(), p) for p, ops in paths.items() if p.startswith("/v1")
            for m in ops if m in ("get", "post", "put", "patch", "delete")]


def _fill(path: str, ids: dict[str, str]) -> str:
    def sub(m):
        name = m.group(1)
        assert name in ids, f"no test value for path parameter {name!r} in {path}: add one"
        return ids[name]
    return re.sub(r"\{(\w+)(?::\w+)?\}", sub, path)


def _minimal(schema: dict, spec: dict):
    """A small value that satisfies ``schema`` (required fields only), so that a request body
    passes validation and the answer is decided by ownership."""
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    if "anyOf" in schema:
        return _minimal(schema["anyOf"][0], spec)
    kind = schema.get("type")
    if kind == "object":
        return {k: _minimal(schema["properties"][k], spec) for k in schema.get("required", [])}
    if kind == "array":
        return [_minimal(schema.get("items", {}), spec)
                for _ in range(max(1, schema.get("minItems", 1)))]
    return {"integer": 1, "number": 1.0, "boolean": False}.get(kind, "x")


def _call(client, method, path, url, headers, alice):
    if method == "POST" and url == "/v1/datasets":
        return client.post(url, headers=headers,
                           files={"file": ("x.csv", b"a,b,label\n1,2,x\n3,4,y\n")})
    if method == "POST" and url == "/v1/jobs":  # someone else's datasets
        return client.post(url, headers=headers, json={
            "train_dataset_id": alice["train"]["id"], "test_dataset_id": alice["test"]["id"],
            "method": FAST_METHOD, "fraction": 0.3})
    spec = client.app.openapi()
    body = spec["paths"][path][method.lower()].get("requestBody")
    if body and "application/json" in body["content"]:
        schema = body["content"]["application/json"]["schema"]
        return client.request(method, url, headers=headers, json=_minimal(schema, spec))
    return client.request(method, url, headers=headers)


def _kind(r) -> tuple[int, str | None]:
    is_problem = r.headers.get("content-type", "").startswith("application/problem+json")
    return r.status_code, r.json()["type"] if is_problem else None


def test_every_endpoint_hides_another_keys_data(client, settings, alice):
    bob, _ = make_key(settings, "bob")
    ids = {"job_id": alice["job"]["id"], "dataset_id": alice["train"]["id"],
           "filename": "curves.svg"}
    ghost = {**ids, "job_id": str(uuid.uuid4()), "dataset_id": str(uuid.uuid4())}
    secrets_of_alice = [alice["train"]["id"], alice["test"]["id"], alice["job"]["id"],
                        alice["train"]["sha256"], "r0,"]
    routes = _v1_routes(client.app)
    assert len(routes) >= 10, routes  # the enumeration found the API
    checked = 0
    for method, path in routes:
        url = _fill(path, ids)
        # no key at all: 401 everywhere
        assert_problem(_call(client, method, path, url, {}, alice), 401, "unauthorized")
        r = _call(client, method, path, url, bob, alice)
        variants = [(r, _call(client, method, path, _fill(path, ghost), bob, alice))]
        if "{job_id}" in path and method == "GET":
            variants += [(client.get(url, headers=bob, params={"format": f}),
                          client.get(_fill(path, ghost), headers=bob, params={"format": f}))
                         for f in ("csv", "parquet")]
        for resp, on_ghost in variants:
            assert resp.status_code < 500, (method, url, resp.text)
            body = resp.text
            if "{" in path:
                # someone else's object answers exactly as one that does not exist
                assert resp.status_code >= 400, (method, url, resp.text)
                assert _kind(resp) == _kind(on_ghost), (method, url, resp.text, on_ghost.text)
                for value in ids.values():  # the detail may echo the id that was asked for
                    body = body.replace(value, "") if value in url else body
            elif method == "POST" and path == "/v1/jobs":
                assert_problem(resp, 422, "unknown-dataset")
                body = re.sub(r"no dataset [0-9a-f-]+", "", body)
            for secret in secrets_of_alice:
                assert secret not in body, (method, url, secret, body[:300])
        # alice herself gets another answer, so the refusals above are about ownership
        if method == "GET" and "{" in path:
            mine = client.get(url, headers=alice["h"])
            assert _kind(mine) != _kind(r), (url, mine.text)
        checked += 1
    assert checked == len(routes)
    # bob's listings hold only his own; his cancel did nothing
    assert client.get("/v1/jobs", headers=bob).json()["items"] == []
    assert [d["name"] for d in client.get("/v1/datasets", headers=bob).json()["items"]] in (
        [], ["x.csv"])
    job = client.get(f"/v1/jobs/{alice['job']['id']}", headers=alice["h"]).json()
    assert job["status"] == "succeeded" and job["cancel_requested"] is False


def test_keys_are_hashed_at_rest_and_compared_in_constant_time(bare_client, monkeypatch):
    client, settings = bare_client
    h, token = make_key(settings, "alice")
    secret_part = token.split("_", 2)[2]
    with session_scope(settings) as s:
        rows = s.scalars(select(ApiKey)).all()
        stored = " ".join(str(getattr(k, c.name)) for k in rows for c in ApiKey.__table__.c)
    assert token not in stored and secret_part not in stored

    import app.db.repo as repo_module

    calls = []
    real = repo_module.hmac.compare_digest

    def spy(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(repo_module.hmac, "compare_digest", spy)
    assert client.get("/v1/jobs", headers=h).status_code == 200
    wrong = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert_problem(client.get("/v1/jobs", headers={"Authorization": f"Bearer {wrong}"}), 401,
                   "unauthorized")
    assert len(calls) == 2  # the right key and the wrong one with a known prefix both compared


def test_no_stack_trace_reaches_a_client(bare_client, monkeypatch):
    import app.db.repo as repo_module

    client, settings = bare_client
    h, _ = make_key(settings, "alice")
    job_id = "5a0c1f7e-0000-4000-8000-000000000000"
    def boom(*a, **k):
        raise RuntimeError("SECRET-internal-state at /srv/hostcp/app.py line 12")

    for name in ("list_jobs", "get_job", "list_datasets"):
        monkeypatch.setattr(repo_module, name, boom)
    for url in ("/v1/jobs", f"/v1/jobs/{job_id}", "/v1/datasets",
                f"/v1/jobs/{job_id}/values?format=csv"):
        r = client.get(url, headers=h)
        body = assert_problem(r, 500, "internal-error")
        for leak in ("SECRET", "RuntimeError", "Traceback", "File \"", "/srv/"):
            assert leak not in r.text, (url, r.text)
        assert body["instance"].startswith("urn:request:")
