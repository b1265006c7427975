"""Dataset container, loaders and validation."""

import numpy as np
import pandas as pd
import pytest

from hostcp_core import (
    DataError,
    flip_labels,
    load_dataset,
    load_train_test,
    make_dataset,
    make_synthetic,
    split_test,
)


@pytest.fixture
def frame():
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(30, 4)), columns=["a", "b", "c", "d"])
    df["label"] = np.where(rng.random(30) < 0.5, "cat", "dog")
    return df


@pytest.mark.parametrize("fmt", ["csv", "parquet", "npz", "libsvm"])
def test_round_trip(tmp_path, frame, fmt):
    X = frame[["a", "b", "c", "d"]].to_numpy()
    y = frame["label"].to_numpy()
    path = tmp_path / f"data.{ {'libsvm': 'svm'}.get(fmt, fmt) }"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "parquet":
        frame.to_parquet(path)
    elif fmt == "npz":
        np.savez(path, X=X, y=(y == "dog").astype(int))
    else:
        from sklearn.datasets import dump_svmlight_file
        dump_svmlight_file(X, (y == "dog").astype(int), str(path))
    ds = load_dataset(path)
    assert ds.X.dtype == np.float32 and ds.X.shape == (30, 4)
    assert ds.y.dtype == np.int64
    np.testing.assert_allclose(ds.X, X.astype(np.float32), rtol=1e-5, atol=1e-5)
    names = ds.label_names()
    expected = y if fmt in ("csv", "parquet") else np.where(y == "dog", "1", "0")
    assert list(names) == list(expected)


def test_label_and_id_columns(tmp_path, frame):
    frame.insert(0, "key", [f"r{i}" for i in range(30)])
    frame = frame.rename(columns={"label": "animal"})
    frame.to_csv(tmp_path / "t.csv", index=False)
    ds = load_dataset(tmp_path / "t.csv", label_column="animal", id_column="key")
    assert ds.classes == ("cat", "dog") and ds.ids[3] == "r3" and ds.n_features == 4
    with pytest.raises(DataError, match="no label column 'nope'"):
        load_dataset(tmp_path / "t.csv", label_column="nope")


@pytest.mark.parametrize("content, message", [
    ("", "empty"),
    ("a,b,label\n1,2,x\n1,nan,y\n", "NaN/inf"),
    ("a,b,label\n1,2,x\n1,2,3,y\n", "ragged rows: line 3 has 4 fields"),
    ("a,b,label\n1,2,x\n3,4,x\n", None),
    ("a,b,label\n1,zz,x\n3,4,y\n", "non-numeric feature column"),
    ("a,b,label\n", "no rows"),
])
def test_csv_errors(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    if message is None:  # one row of one class: loads, but is not a training set
        with pytest.raises(DataError, match="single class"):
            load_train_test(path, path)
        return
    with pytest.raises(DataError, match=message) as err:
        load_dataset(path)
    assert str(err.value).startswith("bad.csv")


def test_train_test_mismatch(tmp_path, frame):
    frame.to_csv(tmp_path / "train.csv", index=False)
    frame.drop(columns=["d"]).to_csv(tmp_path / "test3.csv", index=False)
    with pytest.raises(DataError, match="test3.csv: 3 features, but the training set"):
        load_train_test(tmp_path / "train.csv", tmp_path / "test3.csv")
    other = frame.copy()
    other.loc[0, "label"] = "bird"
    other.to_csv(tmp_path / "test_bird.csv", index=False)
    with pytest.raises(DataError, match="labels not seen in the training set: 'bird'"):
        load_train_test(tmp_path / "train.csv", tmp_path / "test_bird.csv")
    renamed = frame.rename(columns={"a": "zz"})
    renamed.to_csv(tmp_path / "test_cols.csv", index=False)
    with pytest.raises(DataError, match="feature columns differ"):
        load_train_test(tmp_path / "train.csv", tmp_path / "test_cols.csv")


def test_pickled_npz_refused(tmp_path):
    np.savez(tmp_path / "p.npz", X=np.array([[1, 2], [3, 4]], dtype=object), y=np.array([0, 1]))
    with pytest.raises(DataError, match="p.npz"):
        load_dataset(tmp_path / "p.npz")
    np.savez(tmp_path / "k.npz", features=np.zeros((2, 2)))
    with pytest.raises(DataError, match="needs arrays 'X' and 'y'"):
        load_dataset(tmp_path / "k.npz")


def test_make_dataset_validation():
    with pytest.raises(DataError, match="2 feature rows but 3 labels"):
        make_dataset(np.zeros((2, 2)), [0, 1, 1])
    with pytest.raises(DataError, match="2-d"):
        make_dataset(np.zeros(3), [0, 1, 1])
    ds = make_dataset(np.zeros((3, 2)), [1.0, 2.0, 1.0])
    assert ds.classes == ("1", "2")


def test_synthetic_seeded_and_flips():
    a, at = make_synthetic(200, 100, seed=3)
    b, _ = make_synthetic(200, 100, seed=3)
    c, _ = make_synthetic(200, 100, seed=4)
    np.testing.assert_array_equal(a.X, b.X)
    assert not np.array_equal(a.X, c.X)
    assert a.n_features == 50 and set(np.unique(a.y)) == {0, 1} and at.n == 100
    noisy, idx = flip_labels(a, 0.1, seed=0)
    assert len(idx) == 20 and np.all(noisy.y[idx] != a.y[idx])
    assert np.array_equal(np.delete(noisy.y, idx), np.delete(a.y, idx))
    multi = make_dataset(np.zeros((30, 1)), np.arange(30) % 3)
    noisy, idx = flip_labels(multi, 0.2, seed=1)
    assert np.all(noisy.y[idx] != multi.y[idx])


def test_split_test_disjoint_stratified():
    _, test = make_synthetic(50, 400, seed=0)
    val, hold = split_test(test, 0.3, seed=1)
    assert val.n + hold.n == test.n
    assert abs(hold.y.mean() - test.y.mean()) < 0.03
    rows = {tuple(r) for r in val.X[:, :3]}
    assert not any(tuple(r) in rows for r in hold.X[:, :3])
