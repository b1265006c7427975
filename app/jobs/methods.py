"""The methods a job may name, and turning a job's method and parameters into a hostcp_core
valuer (shared by the API's up-front validation, so a job is refused before it is queued, not
after, and by the stages that run it)."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from hostcp_core import METHODS, available_methods, get_valuer

RESERVED = ("fraction", "seed")


def build_valuer(method: str, *, fraction: float, seed: int, params: dict[str, Any]):
    """A configured valuer; ValueError (user-facing) for an unknown method or parameter."""
    clash = sorted(set(RESERVED) & set(params))
    if clash:
        raise ValueError(f"give {', '.join(clash)} as top-level job field(s), not in params")
    if method not in METHODS or method not in available_methods():
        raise ValueError(f"unknown method {method!r}; choose one of "
                         f"{', '.join(available_methods())}")
    module, cls_name = METHODS[method].split(":")
    accepted = inspect.signature(getattr(importlib.import_module(module), cls_name).__init__)
    kw = dict(params)
    # fraction and seed are job fields; pass them to every method that takes them
    if "fraction" in accepted.parameters:
        kw["fraction"] = fraction
    if "seed" in accepted.parameters:
        kw["seed"] = seed
    try:
        return get_valuer(method, **kw)
    except TypeError as exc:  # e.g. a required parameter missing
        raise ValueError(f"method {method!r}: {exc}") from None


# A comparison job (method "compare") runs several methods on the same data; its params map a
# method name to that method's parameters.
COMPARE = "compare"
MAX_COMPARED = 10  # every method there is, once each; a bound on one job's work


def build_valuers(methods: list[str], *, fraction: float, seed: int,
                  params: dict[str, Any]) -> dict[str, Any]:
    """One configured valuer per compared method, in the given order; ValueError (user-facing)
    for an unknown method or parameter, naming the method."""
    out = {}
    for method in methods:
        own = params.get(method, {})
        if not isinstance(own, dict):
            raise ValueError(f"params.{method} must be an object of {method}'s parameters")
        try:
            out[method] = build_valuer(method, fraction=fraction, seed=seed, params=own)
        except ValueError as exc:
            raise ValueError(f"methods: {exc}" if method not in params else
                             f"params.{method}: {exc}") from None
    return out
