"""Property-based fuzzing of every operation in the OpenAPI document (hypothesis): parameters and
bodies drawn from the schema, widened with hostile values (huge numbers, unicode, path tricks,
forged page tokens, unknown fields). Any answer is fine but a 5xx; every 4xx is problem+json."""

from __future__ import annotations

import string
import uuid
from collections import Counter
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from reliability_helpers import make_key
from service_helpers import FAST_METHOD, service_settings, upload, write_csv_pair

from app.core.config import configure

pytestmark = pytest.mark.timeout(180)
EXAMPLES_PER_OPERATION = 30
STATUSES: Counter[int] = Counter()  # answers seen, reported at the end


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An app (no runner: queued jobs stay queued), a key, two datasets, a queued job."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    tmp = tmp_path_factory.mktemp("fuzz")
    s = service_settings(tmp / "data", embedded_runner=False)
    configure(s)
    train_csv, test_csv = write_csv_pair(tmp)
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        h, _ = make_key(s, "fuzzer")
        train = upload(c, h, train_csv, id_column="row_id")
        test = upload(c, h, test_csv, id_column="row_id")
        job = c.post("/v1/jobs", headers=h, json={"train_dataset_id": train["id"],
                                                  "test_dataset_id": test["id"],
                                                  "method": FAST_METHOD}).json()
        token = c.get("/v1/datasets?page_size=1", headers=h).json()["next_page_token"]
        yield {"client": c, "settings": s, "h": h, "ids": [train["id"], test["id"], job["id"]],
               "token": token, "spec": c.app.openapi()}
    configure(None)
    print(f"\nfuzz: {sum(STATUSES.values())} requests, statuses {dict(sorted(STATUSES.items()))}")


def _operations() -> list[tuple[str, str]]:
    from app.main import create_app

    spec = create_app(service_settings(__import__("pathlib").Path("/nonexistent"))).openapi()
    return [(m, p) for p, ops in spec["paths"].items() for m in ops]


HOSTILE_TEXT = st.sampled_from(["", " ", "..", "../../etc/passwd", "%00", "\x00", "null", "-1",
                                "1e309", "NaN", "' OR 1=1 --", "<script>", "ä" * 300,
                                "9" * 40, str(uuid.uuid4())])
ASCII = st.text(alphabet=string.printable.strip() + " ", max_size=60)
JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30))
JSON_ANY = st.recursive(JSON_SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=10)


def _value(schema: dict, world) -> st.SearchStrategy:
    """A value for a parameter schema, often valid, often not."""
    if "anyOf" in schema:
        return st.one_of([_value(s, world) for s in schema["anyOf"]])
    kind = schema.get("type")
    if "enum" in schema:
        return st.one_of(st.sampled_from(schema["enum"]), ASCII)
    if kind == "integer":
        return st.one_of(st.integers(-5, 2000), st.integers(-2**70, 2**70), HOSTILE_TEXT)
    if kind == "number":
        return st.one_of(st.floats(allow_nan=True, allow_infinity=True), HOSTILE_TEXT)
    if kind == "boolean":
        return st.one_of(st.booleans(), ASCII)
    if kind == "null":
        return st.none()
    return st.one_of(st.sampled_from(world["ids"] + [world["token"], world["token"][:-2] + "AA",
                                                     "curves.svg", "classes.png", "x.gif"]),
                     HOSTILE_TEXT, st.text(max_size=80))


def _job_body(world) -> st.SearchStrategy:
    ids = st.one_of(st.sampled_from(world["ids"]), st.text(max_size=40), JSON_SCALAR)
    fields = {"train_dataset_id": ids, "test_dataset_id": ids,
              "method": st.one_of(st.sampled_from(["random", "knn_shapley", "hostcp", "tmc_shapley",
                                                   "nope"]), JSON_SCALAR),
              "fraction": st.one_of(st.floats(-1, 2), JSON_SCALAR),
              "seed": st.one_of(st.integers(-10, 2**64), JSON_SCALAR),
              "params": st.one_of(st.dictionaries(st.sampled_from(
                  ["device", "k", "epochs", "max_permutations", "fraction", "zz"]), JSON_SCALAR,
                  max_size=3), JSON_ANY),
              "extra": JSON_ANY}
    return st.one_of(st.fixed_dictionaries({}, optional=fields), JSON_ANY)


def _json_body(schema: dict, spec: dict) -> st.SearchStrategy:
    """Objects with the schema's field names (any subset) holding arbitrary JSON, or any JSON."""
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    names = list(schema.get("properties", {}))
    floats = st.floats(allow_nan=False, allow_infinity=False)
    fields = {n: st.one_of(JSON_ANY, st.lists(st.lists(floats, max_size=4), max_size=3))
              for n in names}
    return st.one_of(st.fixed_dictionaries({}, optional=fields), JSON_ANY)


@pytest.mark.parametrize("method,path", _operations())
def test_no_server_error(world, method, path):
    client, spec = world["client"], world["spec"]
    op = spec["paths"][path][method]
    params = op.get("parameters", [])

    @hsettings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
               suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data):
        url, query, headers = path, {}, dict(world["h"])
        if data.draw(st.integers(0, 9), label="auth") == 0:
            headers = {"Authorization": data.draw(ASCII, label="authorization")}
        for p in params:
            if p["in"] != "path" and data.draw(st.booleans(), label=f"omit {p['name']}"):
                continue
            value = data.draw(_value(p["schema"], world), label=p["name"])
            if p["in"] == "path":
                url = url.replace("{" + p["name"] + "}", quote(str(value), safe="") or "x")
            elif p["in"] == "query":
                query[p["name"]] = "" if value is None else str(value)
            elif p["in"] == "header":
                headers[p["name"]] = data.draw(st.one_of(ASCII, st.just(str(uuid.uuid4()))))
        kw = {}
        if path == "/v1/jobs" and method == "post":
            kw["json"] = data.draw(_job_body(world), label="body")
        elif "application/json" in op.get("requestBody", {}).get("content", {}):
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            kw["json"] = data.draw(_json_body(schema, spec), label="body")
        elif path == "/v1/datasets" and method == "post":
            name = data.draw(st.one_of(st.sampled_from(["a.csv", "a.npz", "a.parquet", "a.svm",
                                                        "a.exe", "../x.csv", ""]), ASCII))
            body = data.draw(st.one_of(st.binary(max_size=300), st.just(b"a,label\n1,x\n2,y\n")))
            form = data.draw(st.dictionaries(st.sampled_from(["label_column", "id_column",
                                                              "format"]), ASCII, max_size=3))
            kw = {"files": {"file": (name, body)}, "data": form}
        r = client.request(method.upper(), url, params=query, headers=headers, **kw)
        STATUSES[r.status_code] += 1
        assert r.status_code < 500, (method, url, query, r.status_code, r.text[:500])
        if r.status_code >= 400:
            assert r.headers["content-type"].startswith("application/problem+json"), r.text
            assert "Traceback" not in r.text

    run()


# bodies that JSON encoders refuse to write but Python's json module reads: NaN, Infinity,
# numbers beyond float range, deep nesting
RAW_BODIES = [b'{"features": [[NaN, 1.0]], "labels": ["neg"]}',
              b'{"features": [[Infinity]], "labels": ["neg"], "add": true}',
              b'{"features": [[1e999]], "labels": ["pos"]}',
              b'{"fraction": NaN, "train_dataset_id": "x", "test_dataset_id": "y"}',
              b'{"fraction": 0.5, "seed": 1e400, "train_dataset_id": "x", "test_dataset_id": "y"}',
              b"[" * 5000 + b"]" * 5000, b'{"a": "\\ud800"}', b"\xff\xfe", b""]


def test_raw_json_bodies(world):
    client, spec = world["client"], world["spec"]
    ops = [(m, p) for p, o in spec["paths"].items() for m, x in o.items()
           if "application/json" in x.get("requestBody", {}).get("content", {})]
    assert ops
    for method, path in ops:
        url = path.replace("{job_id}", world["ids"][2])
        for raw in RAW_BODIES:
            r = client.request(method.upper(), url, content=raw,
                               headers={**world["h"], "Content-Type": "application/json"})
            STATUSES[r.status_code] += 1
            assert r.status_code < 500, (method, url, raw[:60], r.text[:300])
