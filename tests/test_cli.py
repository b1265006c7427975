"""The `hostcp value` command end to end, and its handling of bad input."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from hostcp_core.cli import main

FAST = ["--param", "epochs=3", "--param", "warmup_epochs=1", "--param", "hidden=[16]",
        "--eval-repeats", "1", "--quiet"]


def test_value_sample_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["value", "--train", "sample:train", "--test", "sample:test", "--method", "hostcp",
               "--fraction", "0.2", "--out", str(out), *FAST])
    assert rc == 0
    values = pd.read_csv(out / "values.csv")
    subset = pd.read_csv(out / "subset.csv")
    summary = json.loads((out / "summary.json").read_text())
    assert len(values) == 400 and values["id"].iloc[0] == "tr0000"
    assert len(subset) == 80 == summary["n_selected"]
    assert set(subset["index"]) == set(values.loc[values["selected"], "index"])
    acc = summary["holdout_accuracy"]
    assert 0.0 <= acc["subset"] <= 1.0 and 0.0 <= acc["random_subset"] <= 1.0
    assert summary["n_test_holdout"] + summary["n_test_valuation"] == 400
    assert summary["classes"] == ["negative", "positive"]
    assert "held-out accuracy" in capsys.readouterr().out


def test_other_method_via_cli(tmp_path):
    rc = main(["value", "--train", "sample:train", "--test", "sample:test", "--method",
               "knn_shapley", "--out", str(tmp_path), "--quiet", "--eval-repeats", "1"])
    assert rc == 0 and len(pd.read_csv(tmp_path / "subset.csv")) == 80


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(40, 3)), columns=["a", "b", "c"])
    df["label"] = rng.integers(0, 2, 40)
    df.to_csv(tmp_path / "train.csv", index=False)
    bad = df.copy()
    bad.loc[5, "b"] = np.nan
    bad.to_csv(tmp_path / "nan.csv", index=False)
    df.drop(columns=["c"]).to_csv(tmp_path / "narrow.csv", index=False)
    return tmp_path


@pytest.mark.parametrize("train, test, extra, message", [
    ("nan.csv", "train.csv", [], "nan.csv: 1 NaN/inf feature values"),
    ("train.csv", "narrow.csv", [], "narrow.csv: 2 features, but the training set"),
    ("train.csv", "missing.csv", [], "missing.csv: no such file"),
    ("train.csv", "train.csv", ["--method", "magic"], "unknown method 'magic'"),
    ("train.csv", "train.csv", ["--fraction", "1.5"], "fraction must be in (0, 1]"),
    ("train.csv", "train.csv", ["--param", "bogus=1"], "has no parameter(s) bogus"),
])
def test_bad_input_exits_2_and_writes_nothing(files, capsys, train, test, extra, message):
    out = files / "out"
    rc = main(["value", "--train", str(files / train), "--test", str(files / test),
               "--out", str(out), "--quiet", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists() or not any(out.iterdir())


def test_console_script_exit_code(files):
    proc = subprocess.run([sys.executable, "-m", "hostcp_core.cli", "value", "--train",
                           str(files / "nan.csv"), "--test", str(files / "train.csv"),
                           "--out", str(files / "o")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
