"""The blob store: uploaded files and their canonical arrays, as files under one directory.

Names are generated here (never taken from the client). Writes are streamed with an
incremental sha256 and a byte cap, into a temporary file renamed into place when complete.
The canonical arrays are an uncompressed .npz (``np.savez``'s layout: one ``<name>.npy``
member per array), which ``save_stream`` writes from a table's batches without holding the
table in memory.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class TooLarge(Exception):
    """More than the allowed bytes were offered."""


class TooManyClasses(Exception):
    """A streamed table's label column has more distinct values than allowed."""

    def __init__(self, n: int) -> None:
        super().__init__(f"more than {n - 1} classes")
        self.n = n


@dataclass(frozen=True)
class StoredTable:
    """What the dataset record needs of a table written by ``save_stream`` (the attributes
    ``repo.add_dataset`` reads of a Dataset); ``y`` holds the label codes, the only per-row
    array kept in memory (4 bytes a row)."""

    array_path: str
    n: int
    n_features: int
    classes: tuple[str, ...]
    y: np.ndarray
    feature_names: tuple[str, ...]

    @property
    def n_classes(self) -> int:
        return len(self.classes)


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

    def save_stream(self, stream, *, max_classes: int) -> StoredTable:
        """The canonical arrays of a ``hostcp_core.loaders.TableStream``, written batch by
        batch: features and label codes go to temporary files as they are parsed, and the .npz
        is assembled from those files in chunks. Memory stays at a batch plus 4 bytes a row.
        Raises the stream's DataError, or TooManyClasses as soon as there are too many."""
        from hostcp_core.data import _class_sort_key

        rel = self._new_rel("arrays", ".npz")
        final = self.path(rel)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(final.name + ".part.npz")
        with tempfile.TemporaryDirectory(dir=final.parent, prefix=".stream-") as work:
            x_path, ids_path = Path(work) / "X.bin", Path(work) / "ids.bin"
            seen: dict[str, int] = {}  # raw label -> code in order of appearance
            codes, id_parts, n = [], [], 0
            with open(x_path, "wb") as xf, open(ids_path, "wb") as idf:
                for b in stream:
                    remap = np.fromiter((seen.setdefault(v, len(seen))
                                         for v in b.label_values), dtype=np.int32,
                                        count=len(b.label_values))
                    if len(seen) > max_classes:
                        raise TooManyClasses(len(seen))
                    codes.append(remap[b.label_codes])
                    xf.write(np.ascontiguousarray(b.X, dtype=np.float32).tobytes())
                    if b.ids is not None:
                        idf.write(b.ids.tobytes())
                        id_parts.append((b.ids.dtype.itemsize // 4, len(b.ids)))
                    n += len(b.X)
            # class names as load_dataset gives them (sorted; "1" and "1.0" may be one class)
            raw = list(seen)
            named = stream.class_names(raw)
            classes = tuple(sorted(set(named.values()), key=_class_sort_key))
            position = {c: k for k, c in enumerate(classes)}
            to_class = np.asarray([position[named[r]] for r in raw], dtype=np.int32)
            y = to_class[np.concatenate(codes)] if codes else np.zeros(0, dtype=np.int32)
            d = stream.n_features
            try:
                with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                    with open(x_path, "rb") as src:
                        _npy_member(zf, "X", np.dtype(np.float32), (n, d),
                                    file_chunks(src, 4 * 1024 * 1024))
                    names = np.asarray(classes, dtype=str)
                    _npy_member(zf, "labels", names.dtype, (n,),
                                (names[y[i:i + 65536]].tobytes()
                                 for i in range(0, n, 65536)))
                    _npy_member(zf, "classes", names.dtype, (len(classes),), [names.tobytes()])
                    if stream.id_column is not None:
                        width = max((w for w, _ in id_parts), default=1)
                        _npy_member(zf, "ids", np.dtype(f"<U{width}"), (n,),
                                    _widened(ids_path, id_parts, width))
                    fnames = np.asarray(stream.feature_names, dtype=str)
                    _npy_member(zf, "feature_names", fnames.dtype, fnames.shape,
                                [fnames.tobytes()])
                os.replace(tmp, final)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        return StoredTable(rel, n, d, classes, y, tuple(stream.feature_names))

    def load_arrays(self, rel_path: str) -> dict[str, np.ndarray]:
        with np.load(self.path(rel_path), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}

    def delete(self, rel_path: str) -> None:
        self.path(rel_path).unlink(missing_ok=True)


def file_chunks(fh, size: int = 1024 * 1024) -> Iterable[bytes]:
    while chunk := fh.read(size):
        yield chunk


def _npy_member(zf: zipfile.ZipFile, name: str, dtype: np.dtype, shape: tuple,
                chunks: Iterable[bytes]) -> None:
    """One ``<name>.npy`` member, as np.savez writes it, from the array's raw C-order bytes."""
    with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                 "shape": tuple(shape)})
        for chunk in chunks:
            fh.write(chunk)


def _widened(path: Path, parts: Sequence[tuple[int, int]], width: int) -> Iterable[bytes]:
    """Per-batch fixed-width strings (each batch its own width) re-read at one width."""
    with open(path, "rb") as fh:
        for w, count in parts:
            arr = np.frombuffer(fh.read(4 * w * count), dtype=f"<U{w}")
            yield arr.astype(f"<U{width}").tobytes()


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
    """Rebuild a Dataset; ``classes`` (the training set's) fixes the label encoding.

    Stored labels are class names as fixed-width text, encoded here with one sorted search
    rather than make_dataset's Python loop per row (a million rows: no million str objects);
    the result, and the error for a label outside ``classes``, are make_dataset's."""
    from hostcp_core import DataError, make_dataset
    from hostcp_core.data import Dataset, _as_feature_matrix

    if classes is None:
        classes = [str(c) for c in arrays["classes"]]
    fnames = arrays.get("feature_names")
    fnames = None if fnames is None else [str(f) for f in fnames]
    labels, ids = arrays["labels"], arrays.get("ids")
    if labels.dtype.kind != "U" or labels.ndim != 1 or len(labels) != len(arrays["X"]):
        return make_dataset(arrays["X"], labels, classes=classes, ids=ids,
                            feature_names=fnames, name=name)
    names = np.asarray([str(c) for c in classes], dtype=str)
    order = np.argsort(names, kind="stable")
    pos = np.minimum(np.searchsorted(names[order], labels), len(names) - 1)
    known = names[order][pos] == labels
    if not known.all():
        unknown = sorted(set(labels[~known].tolist()))
        raise DataError(f"{name}: labels not seen in the training set: "
                        f"{', '.join(repr(u) for u in unknown[:5])}")
    if ids is not None and ids.shape != (len(labels),):
        raise DataError(f"{name}: {len(ids)} ids for {len(labels)} rows")
    return Dataset(_as_feature_matrix(arrays["X"], name), order[pos].astype(np.int64),
                   tuple(str(c) for c in classes), ids,
                   None if fnames is None else tuple(fnames), name)
