"""The methods a job may name, and turning a job's method and parameters into a hostcp_core
valuer. The API checks a job with ``check_valuer(s)`` before it is queued (refused then, not
after), reading each valuer's parameters from the catalogue — without importing the valuer, so
the API process never loads torch; the stages that run the job build it with
``build_valuer(s)``, with the same checks."""

from __future__ import annotations

from typing import Any

from hostcp_core import METHODS, available_methods, get_valuer
from hostcp_core.catalogue import parameters

RESERVED = ("fraction", "seed")


def _valuer_kwargs(method: str, *, fraction: float, seed: int,
                   params: dict[str, Any]) -> dict[str, Any]:
    """The valuer's keyword arguments; ValueError (user-facing) for an unknown method, an
    unknown parameter or a missing required one."""
    clash = sorted(set(RESERVED) & set(params))
    if clash:
        raise ValueError(f"give {', '.join(clash)} as top-level job field(s), not in params")
    if method not in METHODS or method not in available_methods():
        raise ValueError(f"unknown method {method!r}; choose one of "
                         f"{', '.join(available_methods())}")
    accepted = {p["name"]: p for p in parameters(method)}
    kw = dict(params)
    # fraction and seed are job fields; pass them to every method that takes them
    for name, value in (("fraction", fraction), ("seed", seed)):
        if name in accepted:
            kw[name] = value
    unknown = sorted(set(kw) - set(accepted))
    if unknown:
        raise ValueError(f"method {method!r} has no parameter(s) {', '.join(unknown)}; "
                         f"it takes {', '.join(sorted(accepted))}")
    missing = sorted(n for n, p in accepted.items() if p["required"] and n not in kw)
    if missing:
        raise ValueError(f"method {method!r}: missing required parameter(s) "
                         f"{', '.join(missing)}")
    return kw


def check_valuer(method: str, *, fraction: float, seed: int, params: dict[str, Any]) -> None:
    """What ``build_valuer`` would refuse, refused without importing the valuer."""
    _valuer_kwargs(method, fraction=fraction, seed=seed, params=params)


def build_valuer(method: str, *, fraction: float, seed: int, params: dict[str, Any]):
    """A configured valuer; ValueError (user-facing) for an unknown method or parameter."""
    return get_valuer(method, **_valuer_kwargs(method, fraction=fraction, seed=seed,
                                               params=params))


# A comparison job (method "compare") runs several methods on the same data; its params map a
# method name to that method's parameters.
COMPARE = "compare"
MAX_COMPARED = len(METHODS)  # every method there is, once each; a bound on one job's work


def _each(methods: list[str], params: dict[str, Any], make, **job) -> dict[str, Any]:
    out = {}
    for method in methods:
        own = params.get(method, {})
        if not isinstance(own, dict):
            raise ValueError(f"params.{method} must be an object of {method}'s parameters")
        try:
            out[method] = make(method, params=own, **job)
        except ValueError as exc:
            raise ValueError(f"methods: {exc}" if method not in params else
                             f"params.{method}: {exc}") from None
    return out


def check_valuers(methods: list[str], *, fraction: float, seed: int,
                  params: dict[str, Any]) -> None:
    """``check_valuer`` for each compared method, naming the method in the error."""
    _each(methods, params, check_valuer, fraction=fraction, seed=seed)


def build_valuers(methods: list[str], *, fraction: float, seed: int,
                  params: dict[str, Any]) -> dict[str, Any]:
    """One configured valuer per compared method, in the given order; ValueError (user-facing)
    for an unknown method or parameter, naming the method."""
    return _each(methods, params, build_valuer, fraction=fraction, seed=seed)
