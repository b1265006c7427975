"""StatLog DNA (splice junctions; 3186 sequences, 180 binary features, 3 classes) from the R
package mlbench as Debian ships it: the protein stand-in (DESIGN §5)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from hostcp_core.data import Dataset, make_dataset
from hostcp_core.datasets._common import data_dir, missing

_RDA = "usr/lib/R/site-library/mlbench/data/DNA.rda"
_COMMAND = ("cd /tmp && apt-get download r-cran-mlbench && dpkg -x r-cran-mlbench_*.deb "
            "~/.cache/hostcp-data/mlbench && .venv/bin/pip install rdata")


def _rda_path(root: Path) -> Path:
    for base in (root / "mlbench", Path("/")):   # unpacked with dpkg -x, or installed with R
        if (base / _RDA).is_file():
            return base / _RDA
    raise missing("Debian package r-cran-mlbench (StatLog DNA)", _COMMAND)


def load_statlog_dna(n_train: int | None = 2000, n_test: int | None = 1000, *, seed: int = 0,
                     data_path=None) -> tuple[Dataset, Dataset]:
    """StatLog DNA split at random (seeded) into disjoint train and test parts of the given
    sizes (together at most 3186). Features are the 180 indicator columns as 0/1 floats."""
    root = data_dir(data_path)
    path = _rda_path(root)
    cache = root / "statlog_dna.npz"   # parsing the .rda takes seconds; the arrays load at once
    if cache.is_file() and cache.stat().st_mtime >= path.stat().st_mtime:
        with np.load(cache, allow_pickle=False) as z:
            X, labels = z["X"], z["labels"]
    else:
        try:
            import rdata
        except ImportError:
            raise missing("PyPI package rdata", ".venv/bin/pip install rdata") from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # rdata warns about the file's unset encoding
            df = rdata.read_rda(str(path))["DNA"]
        X = df.drop(columns=["Class"]).astype(np.float32).to_numpy()
        labels = df["Class"].astype(str).to_numpy().astype("U")
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name("statlog_dna.tmp.npz")
        np.savez(tmp, X=X, labels=labels)
        tmp.replace(cache)
    return _split(X, labels, n_train, n_test, seed, "statlog_dna")


def _split(X, labels, n_train, n_test, seed, name) -> tuple[Dataset, Dataset]:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(labels))
    n_tr = len(labels) // 2 if n_train is None else n_train
    n_te = len(labels) - n_tr if n_test is None else n_test
    if n_tr + n_te > len(labels):
        raise ValueError(f"{name}: {n_tr} + {n_te} rows asked, {len(labels)} available")
    tr, te = perm[:n_tr], perm[n_tr:n_tr + n_te]
    classes = tuple(sorted(set(labels)))
    return (make_dataset(X[tr], labels[tr], classes=classes, name=name),
            make_dataset(X[te], labels[te], classes=classes, name=f"{name}-test"))


