"""Shared helpers of the dataset loaders: where data lives, subsampling, missing-package errors."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import numpy as np

from hostcp_core.errors import DataError

INSTALL_HINT = "bash scripts/datasets.sh"


class MissingDatasetError(DataError):
    """A dataset's registry package is not installed; the message names the install command."""


def missing(what: str, command: str) -> MissingDatasetError:
    return MissingDatasetError(f"{what} is not installed: run `{command}` "
                               f"(or `{INSTALL_HINT}`, which installs every paper dataset)")


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """Where unpacked data and cached feature extractors live: ``path``, else
    ``$HOSTCP_DATA_DIR``, else ``~/.cache/hostcp-data``."""
    p = path or os.environ.get("HOSTCP_DATA_DIR") or Path.home() / ".cache" / "hostcp-data"
    return Path(p)


def package_file(dist: str, relpath: str, command: str) -> Path:
    """A data file shipped inside an installed PyPI distribution (found through its metadata,
    so it works whatever the install location)."""
    try:
        d = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise missing(f"PyPI package {dist!r}", command) from None
    p = Path(d.locate_file(relpath))
    if not p.is_file():
        raise missing(f"{relpath} of PyPI package {dist!r}", command)
    return p


def subsample(n_total: int, n: int | None, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct rows drawn at random (all rows, shuffled, when ``n`` is None or too big),
    returned sorted so the subsample keeps the source order."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    if n < 1:
        raise ValueError(f"subsample size must be >= 1, got {n}")
    return np.sort(rng.choice(n_total, n, replace=False))
