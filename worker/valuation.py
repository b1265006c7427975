"""Turning a job's method and parameters into a hostcp_core valuer (shared with the API's
up-front validation, so a job is refused before it is queued, not after)."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

RESERVED = ("fraction", "seed")


def build_valuer(method: str, *, fraction: float, seed: int, params: dict[str, Any]):
    """A configured valuer; ValueError (user-facing) for an unknown method or parameter."""
    from hostcp_core import METHODS, available_methods, get_valuer

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
