"""The blob store: uploaded files and their canonical arrays, as files under one directory.

Names are generated here (never taken from the client). Writes are streamed with an
incremental sha256 and a byte cap, into a temporary file renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class TooLarge(Exception):
    """More than the allowed bytes were offered."""


@dataclass(frozen=True)
class StoredFile:
    rel_path: str
    sha256: str
    size: int


class Storage:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, rel_path: str) -> Path:
        p = (self.root / rel_path).resolve()
        if self.root.resolve() not in p.parents:
            raise ValueError(f"path outside the storage root: {rel_path!r}")
        return p

    def _new_rel(self, kind: str, suffix: str) -> str:
        name = uuid.uuid4().hex
        return f"{kind}/{name[:2]}/{name}{suffix}"

    def write_stream(self, chunks: Iterable[bytes], *, suffix: str, max_bytes: int,
                     kind: str = "raw") -> StoredFile:
        rel = self._new_rel(kind, suffix)
        final = self.path(rel)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(final.name + ".part")
        digest, size = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as fh:
                for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise TooLarge(f"more than {max_bytes} bytes")
                    digest.update(chunk)
                    fh.write(chunk)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return StoredFile(rel, digest.hexdigest(), size)

    def save_arrays(self, arrays: dict[str, np.ndarray]) -> str:
        rel = self._new_rel("arrays", ".npz")
        final = self.path(rel)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(final.name + ".part.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, final)
        return rel

    def load_arrays(self, rel_path: str) -> dict[str, np.ndarray]:
        with np.load(self.path(rel_path), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}

    def delete(self, rel_path: str) -> None:
        self.path(rel_path).unlink(missing_ok=True)


def file_chunks(fh, size: int = 1024 * 1024) -> Iterable[bytes]:
    while chunk := fh.read(size):
        yield chunk


def dataset_arrays(ds) -> dict[str, np.ndarray]:
    """A Dataset as plain arrays (labels as class names) that load with allow_pickle=False."""
    arrays = {"X": ds.X, "labels": np.asarray(ds.label_names(), dtype=str),
              "classes": np.asarray(ds.classes, dtype=str)}
    if ds.ids is not None:
        arrays["ids"] = np.asarray([str(i) for i in ds.ids], dtype=str)
    if ds.feature_names is not None:
        arrays["feature_names"] = np.asarray(ds.feature_names, dtype=str)
    return arrays


def arrays_dataset(arrays: dict[str, np.ndarray], *, classes=None, name: str = "dataset"):
    """Rebuild a Dataset; ``classes`` (the training set's) fixes the label encoding."""
    from hostcp_core import make_dataset

    if classes is None:
        classes = [str(c) for c in arrays["classes"]]
    fnames = arrays.get("feature_names")
    return make_dataset(arrays["X"], arrays["labels"], classes=classes, ids=arrays.get("ids"),
                        feature_names=None if fnames is None else [str(f) for f in fnames],
                        name=name)
