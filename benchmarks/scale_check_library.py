"""Do a service job's stored results equal the library called directly on the same data?

Reads every succeeded single-method job of a kept ``scale_job.py --keep`` work directory
(embedded: its SQLite file and stored arrays), recomputes the job's valuation and mislabel
report with hostcp_core on the stored arrays (the same split of the test set, seed and
parameters as the job), and prints the largest differences.

    python benchmarks/scale_check_library.py /tmp/hostcp-scale-embedded-XXXX
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from sqlalchemy import select

from app.core.config import Settings
from app.db.models import DatasetRecord, Job, JobStatus, PointResult
from app.db.session import session_scope
from app.jobs.data import load_job_data
from app.jobs.methods import COMPARE, build_valuer
from hostcp_core import split_test
from hostcp_core.evaluation import mislabel_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", type=Path)
    args = ap.parse_args()
    settings = Settings(data_dir=args.workdir / "data", database_url=None, secret_key="x")
    with session_scope(settings) as s:
        jobs = s.scalars(select(Job).where(Job.status == JobStatus.SUCCEEDED,
                                           Job.method != COMPARE)).all()
        specs = [(j.id, j.method, dict(j.params or {}), j.fraction, j.seed, j.flag_precision,
                  s.get(DatasetRecord, j.train_dataset_id), s.get(DatasetRecord, j.test_dataset_id))
                 for j in jobs]
    for job_id, method, params, fraction, seed, flag_precision, train_rec, test_rec in specs:
        train, test = load_job_data(settings, train_rec, test_rec)
        valuation, _ = split_test(test, settings.holdout_fraction, seed=seed)
        with session_scope(settings) as s:
            rows = s.execute(select(PointResult.score, PointResult.selected,
                                    PointResult.label_error_prob, PointResult.suspected_mislabel)
                             .where(PointResult.job_id == job_id)
                             .order_by(PointResult.point_index)).all()
        stored = np.array([r[0] for r in rows])
        stored_sel = np.flatnonzero([r[1] for r in rows])
        stored_p = np.array([r[2] for r in rows], dtype=float)
        stored_flags = np.array([r[3] for r in rows], dtype=bool)
        t = time.perf_counter()
        result = build_valuer(method, fraction=fraction, seed=seed, params=params).fit(
            train, valuation)
        report = mislabel_report(train, result.values, seed=seed,
                                 flag_precision=flag_precision).sort_values("index")
        took = time.perf_counter() - t
        print(f"{method} job {job_id[:8]}, {train.n:,} rows (library {took:.1f} s): "
              f"values max |diff| {np.abs(stored - result.values).max():.3g}, "
              f"subset equal {np.array_equal(np.sort(result.selected), stored_sel)}, "
              f"label_error_prob max |diff| "
              f"{np.abs(stored_p - report['label_error_prob'].to_numpy()).max():.3g}, "
              f"flags equal {np.array_equal(stored_flags, report['suspected'].to_numpy())}")


if __name__ == "__main__":
    main()
