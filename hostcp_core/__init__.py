"""hostcp_core: HOST-CP data-subset selection, data valuers and their evaluation.

A pure library (numpy, torch, cvxpy): it never imports the service layers.
"""

from hostcp_core import catalogue  # the module: catalogue.catalogue(), method_info(), ...
from hostcp_core.catalogue import check_feasible
from hostcp_core.data import Dataset, check_compatible, make_dataset, split_test, validate_train
from hostcp_core.errors import Cancelled, DataError, NotFittedError
from hostcp_core.loaders import load_dataset, load_train_test
from hostcp_core.progress import Progress, ProgressCallback
from hostcp_core.result import ValuationResult, subset_size
from hostcp_core.synthetic import flip_labels, make_synthetic
from hostcp_core.valuer import METHODS, Valuer, available_methods, get_valuer

__all__ = [
    "METHODS",
    "Cancelled",
    "DataError",
    "Dataset",
    "NotFittedError",
    "Progress",
    "ProgressCallback",
    "ValuationResult",
    "Valuer",
    "available_methods",
    "catalogue",
    "check_compatible",
    "check_feasible",
    "flip_labels",
    "get_valuer",
    "load_dataset",
    "load_train_test",
    "make_dataset",
    "make_synthetic",
    "split_test",
    "subset_size",
    "validate_train",
]

__version__ = "0.1.0"
