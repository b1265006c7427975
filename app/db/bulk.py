"""Inserting many rows without an ORM object (or a dict) per row: Postgres ``COPY`` in the
session's transaction; on SQLite the driver's own ``executemany`` over row tuples (several
times faster than SQLAlchemy's dict-per-row insert); SQLAlchemy's batched insert elsewhere.
Memory is bounded by one batch, whatever the number of rows."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from sqlalchemy import Table, insert
from sqlalchemy.orm import Session

BATCH = 20_000
# after a COPY this large, refresh the planner's statistics: until autovacuum gets to a freshly
# filled table, keyset page queries on it scan every later row (~94 ms a page at 300k rows)
ANALYZE_FROM = 10_000


def _as_list(column, start: int, stop: int) -> list:
    part = column[start:stop]
    return part.tolist() if isinstance(part, np.ndarray) else list(part)  # numpy -> Python


def insert_columns(session: Session, table: Table, columns: Mapping[str, Sequence | np.ndarray],
                   *, batch: int = BATCH,
                   on_batch: Callable[[int, int], None] | None = None) -> int:
    """Insert the rows given column-wise (every column the same length; a scalar-free
    mapping of name -> values) into ``table`` inside ``session``'s transaction; returns the
    number of rows. ``on_batch(rows_done, rows)`` is called after every batch; it may raise to
    abandon the insert (the caller's transaction then rolls back)."""
    names = list(columns)
    lengths = {len(columns[c]) for c in names}
    if len(lengths) != 1:
        raise ValueError(f"columns of different lengths: {sorted(lengths)}")
    (n,) = lengths
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        raw = conn.connection.driver_connection  # psycopg 3, in this transaction
        cols = ", ".join(f'"{c}"' for c in names)
        with raw.cursor() as cur, cur.copy(f'COPY "{table.name}" ({cols}) FROM STDIN') as copy:
            for start in range(0, n, batch):
                parts = [_as_list(columns[c], start, start + batch) for c in names]
                for row in zip(*parts, strict=True):
                    copy.write_row(row)
                if on_batch is not None:
                    on_batch(min(start + batch, n), n)
        if n >= ANALYZE_FROM:
            conn.exec_driver_sql(f'ANALYZE "{table.name}"')
        return n
    if conn.dialect.name == "sqlite":
        raw = conn.connection.driver_connection  # sqlite3, in this transaction
        cols = ", ".join(f'"{c}"' for c in names)
        sql = f'INSERT INTO "{table.name}" ({cols}) VALUES ({", ".join("?" * len(names))})'
        for start in range(0, n, batch):
            parts = [_as_list(columns[c], start, start + batch) for c in names]
            raw.executemany(sql, zip(*parts, strict=True))
            if on_batch is not None:
                on_batch(min(start + batch, n), n)
        return n
    stmt = insert(table)
    for start in range(0, n, batch):
        parts = [_as_list(columns[c], start, start + batch) for c in names]
        conn.execute(stmt, [dict(zip(names, row, strict=True)) for row in zip(*parts,
                                                                              strict=True)])
        if on_batch is not None:
            on_batch(min(start + batch, n), n)
    return n
