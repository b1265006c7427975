"""Limits on what an upload may expand into, checked before and after parsing.

The byte cap alone does not bound the work: a compressed .npz or Parquet file can expand a
thousandfold (a zip bomb), a CSV of 10⁵ columns takes seconds to parse, and labels with 10⁵
distinct values are no classification task. The pre-check reads only archive directories,
file metadata or the first line; the post-check looks at the parsed dataset.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from app.core import problems
from app.core.problems import Problem

# A CSV of N bytes parses to at most about 4N bytes of float64 ("0," is 2 bytes, 8 in memory),
# so a binary upload may expand as far as that, and no further.
EXPANSION = 4
_FIRST_LINE_MAX = 4 * 1024 * 1024


def precheck(path: Path, fmt: str, *, max_upload_bytes: int, max_features: int) -> None:
    """Refuse, before parsing, a file that would expand too far or has too many columns."""
    limit = EXPANSION * max_upload_bytes
    if fmt == "npz":
        try:
            with zipfile.ZipFile(path) as zf:
                expanded = sum(info.file_size for info in zf.infolist())
        except (zipfile.BadZipFile, OSError, ValueError):
            return  # not a zip: the loader reports it as unreadable
        # zipfile never reads past a member's declared size, so the sum bounds the work
        if expanded > limit:
            raise Problem(problems.DATASET_TOO_LARGE, f"the archive expands to {expanded} bytes; "
                          f"at most {limit} are accepted")
    elif fmt == "parquet":
        try:
            import pyarrow.parquet as pq

            meta = pq.ParquetFile(path).metadata
        except Exception:
            return  # the loader reports an unreadable file
        if meta.num_columns > max_features + 2:
            _too_many_columns(meta.num_columns, max_features)
        expanded = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        if max(expanded, 8 * meta.num_rows * meta.num_columns) > limit:
            raise Problem(problems.DATASET_TOO_LARGE, f"the table expands past {limit} bytes")
    elif fmt == "libsvm":
        # sparse rows become a dense matrix: "1 99999999:1" alone would be 800 MB per row
        n_rows, top = 0, 0
        with open(path, "rb") as fh:
            for line in fh:
                n_rows += 1
                for tok in line.split()[1:]:
                    idx, _, _ = tok.partition(b":")
                    if idx.isdigit():
                        top = max(top, int(idx))
        if top > max_features:
            _too_many_columns(top, max_features)
        if 8 * n_rows * top > limit:
            raise Problem(problems.DATASET_TOO_LARGE, f"the table expands past {limit} bytes")
    elif fmt == "csv":
        with open(path, "rb") as fh:
            first = fh.readline(_FIRST_LINE_MAX)
        n_cols = max(first.count(b","), first.count(b"\t"), first.count(b";")) + 1
        if n_cols > max_features + 2:  # + label and id columns
            _too_many_columns(n_cols, max_features)


def postcheck(ds, *, max_features: int, max_classes: int) -> None:
    """Refuse a parsed dataset with more features or classes than the service handles."""
    check_width(ds.n_features, max_features=max_features)
    if ds.n_classes > max_classes:
        too_many_classes(ds.n_classes, max_classes=max_classes)


def check_width(n_features: int, *, max_features: int) -> None:
    """Refuse a table with more feature columns than the service handles (a streamed table is
    checked on its header, before its rows are parsed)."""
    if n_features > max_features:
        _too_many_columns(n_features, max_features)


def too_many_classes(n: int, *, max_classes: int) -> None:
    # a streamed table stops at the first label past the cap, so n may be a lower bound
    raise Problem(problems.INVALID_DATA, f"{n} classes; at most {max_classes} are accepted "
                  "(is the label column right?)")


def _too_many_columns(n: int, max_features: int) -> None:
    raise Problem(problems.INVALID_DATA, f"{n} columns; at most {max_features} features are "
                  "accepted")
