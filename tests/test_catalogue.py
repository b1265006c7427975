"""The method catalogue (issue 13): complete, in step with the valuers' signatures, JSON-able,
and check_feasible refuses sizes above a method's limit while naming those that fit."""

import importlib
import inspect
import json

import pytest

from hostcp_core import METHODS, get_valuer
from hostcp_core.catalogue import (
    PURPOSES,
    catalogue,
    check_feasible,
    estimate_seconds,
    max_train,
    method_info,
)


def test_every_method_is_catalogued_and_json_able():
    cat = catalogue()
    assert [m["name"] for m in cat] == list(METHODS)
    assert json.loads(json.dumps(cat)) == cat
    for m in cat:
        assert m["purpose"] in PURPOSES and isinstance(m["gpu"], bool) and m["summary"]
        assert m["cost"]["model"] and m["cost"]["ref_seconds"] > 0
        if m["max_train"] is not None:
            assert m["cost"]["limit_reason"]


@pytest.mark.parametrize("method", list(METHODS))
def test_parameters_match_the_signature(method):
    module, cls_name = METHODS[method].split(":")
    sig = inspect.signature(getattr(importlib.import_module(module), cls_name).__init__)
    want = [p for p in list(sig.parameters.values())[1:]]
    got = method_info(method)["parameters"]
    assert [p["name"] for p in got] == [p.name for p in want]
    for entry, p in zip(got, want, strict=True):
        default = list(p.default) if isinstance(p.default, tuple) else p.default
        assert entry["default"] == default, entry
        assert entry["type"] == p.annotation  # annotations are strings (future annotations)
        assert entry["doc"], f"{method}.{entry['name']} has no description"
    # the listed defaults are accepted by the valuer itself
    get_valuer(method, **{p["name"]: p["default"] for p in got
                          if not isinstance(p["default"], list)})


def test_superlinear_methods_state_their_feasible_size():
    for method in ("loo", "tmc_shapley", "facility_location"):  # superlinear
        assert max_train(method) is not None
    for method in ("knn_shapley", "data_oob", "hostcp", "influence", "tracin", "random"):
        assert max_train(method) is None
    assert estimate_seconds("loo", 20_000) > 100 * estimate_seconds("loo", 1000)


def test_check_feasible_refuses_loo_at_100k_and_names_what_fits():
    with pytest.raises(ValueError) as exc:
        check_feasible("loo", 100_000, 2000, {})
    msg = str(exc.value)
    assert "20,000" in msg and "100,000" in msg
    assert "knn_shapley" in msg and "data_oob" in msg and "tmc_shapley" not in msg
    check_feasible("loo", 20_000, 2000, {"l2": 0.1})


def test_check_feasible_accepts_the_scalable_methods_at_1m():
    for method in ("knn_shapley", "data_oob"):
        check_feasible(method, 1_000_000, 2000, {})


def test_check_feasible_other_refusals():
    with pytest.raises(ValueError, match="unknown method"):
        check_feasible("nope", 10, 10)
    with pytest.raises(ValueError, match="no parameter"):
        check_feasible("knn_shapley", 10, 10, {"kk": 3})
    with pytest.raises(ValueError, match="tmc_shapley accepts at most 2,000"):
        check_feasible("tmc_shapley", 3000, 100)
    check_feasible("tmc_shapley", 3000, 100, workers=4)  # limit × √4 with distributed parts


def test_the_catalogue_is_read_without_importing_the_valuers():
    # the API serves the catalogue and validates jobs with it: it must not load torch for that
    import subprocess
    import sys

    code = ("import sys; from hostcp_core.catalogue import catalogue, check_feasible; "
            "catalogue(); check_feasible('knn_shapley', 10, 10, {'k': 1}); "
            "print(sorted(m for m in ('torch', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
