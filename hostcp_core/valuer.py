"""The Valuer interface every method implements, and the registry of methods by name."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import time
from typing import Any, ClassVar

from hostcp_core.data import Dataset, check_compatible, validate_train
from hostcp_core.errors import NotFittedError
from hostcp_core.progress import ProgressCallback
from hostcp_core.result import ValuationResult


class Valuer:
    """Base class. Subclasses store configuration in ``__init__`` (no logic, no validation),
    implement ``_fit`` and set ``name``. ``fit`` validates the data, times the run, stores the
    result in ``result_`` and returns it. Higher values mean more valuable points."""

    name: ClassVar[str] = "valuer"

    def get_params(self) -> dict[str, Any]:
        sig = inspect.signature(type(self).__init__)
        return {p: getattr(self, p) for p in sig.parameters if p != "self" and hasattr(self, p)}

    def fit(self, train: Dataset, test: Dataset, *,
            progress: ProgressCallback | None = None) -> ValuationResult:
        validate_train(train)
        check_compatible(train, test)
        t0 = time.perf_counter()
        result = self._fit(train, test, progress=progress)
        result.timings.setdefault("total_s", time.perf_counter() - t0)
        result.params = {**self.get_params(), **result.params}
        self.result_ = result
        return result

    def _fit(self, train: Dataset, test: Dataset, *,
             progress: ProgressCallback | None) -> ValuationResult:
        raise NotImplementedError

    @property
    def result(self) -> ValuationResult:
        if not hasattr(self, "result_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit()")
        return self.result_

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


# Method name -> "module:Class". Imported lazily so that listing methods stays cheap.
METHODS: dict[str, str] = {
    "recommended": "hostcp_core.recommended:RecommendedSelection",
    "hostcp": "hostcp_core.hostcp:HostCP",
    "random": "hostcp_core.valuers.random:RandomValuer",
    "knn_shapley": "hostcp_core.valuers.knn_shapley:KNNShapley",
    "data_oob": "hostcp_core.valuers.data_oob:DataOOB",
    "loo": "hostcp_core.valuers.loo:LeaveOneOut",
    "influence": "hostcp_core.valuers.influence:InfluenceFunction",
    "tracin": "hostcp_core.valuers.tracin:TracInCP",
    "tmc_shapley": "hostcp_core.valuers.tmc_shapley:TMCShapley",
    "dvrl": "hostcp_core.valuers.dvrl:DVRL",
    "facility_location": "hostcp_core.valuers.facility_location:RawFacilityLocation",
}


def available_methods() -> list[str]:
    out = []
    for name, target in METHODS.items():
        module = target.split(":")[0]
        if importlib.util.find_spec(module) is not None:
            out.append(name)
    return out


def get_valuer(name: str, **params: Any) -> Valuer:
    """Instantiate a valuer by name with its parameters; unknown names or parameters raise
    ``ValueError`` with the choices."""
    if name not in METHODS or name not in available_methods():
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(available_methods())}")
    module, cls_name = METHODS[name].split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(f"method {name!r} has no parameter(s) {', '.join(unknown)}; "
                         f"it takes {', '.join(sorted(accepted))}")
    return cls(**params)
