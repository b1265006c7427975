"""A job's data as the stages see it: its stored datasets, loaded as hostcp_core Datasets, and
results made JSON-safe for the job's summary."""

from __future__ import annotations

import numpy as np

from app.core.config import Settings
from app.db.models import DatasetRecord
from app.storage import Storage, arrays_dataset


def load_job_data(settings: Settings, train_rec: DatasetRecord, test_rec: DatasetRecord):
    """The job's (train, test) Datasets; the test set uses the training set's class names."""
    store = Storage(settings.storage_root)
    train = arrays_dataset(store.load_arrays(train_rec.array_path), name=train_rec.name)
    test = arrays_dataset(store.load_arrays(test_rec.array_path), classes=train.classes,
                          name=test_rec.name)
    return train, test


def jsonable(obj):
    """``obj`` with numpy scalars unwrapped, non-finite floats as None (JSON has no NaN) and
    large arrays abbreviated: what a job summary may hold."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, np.ndarray):
        return obj.tolist() if obj.size <= 100 else f"<array shape={obj.shape}>"
    if isinstance(obj, float | int | str | bool) or obj is None:
        return obj
    return str(obj)
