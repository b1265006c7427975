"""Result and error types shared by the selection solvers."""

from __future__ import annotations

from dataclasses import dataclass

import torch


class SolverError(RuntimeError):
    """The selection program was not solved to tolerance; ``residual`` says how far off it is."""

    def __init__(self, message: str, residual: float = float("nan"), iterations: int = 0) -> None:
        super().__init__(message)
        self.residual = residual
        self.iterations = iterations


@dataclass(frozen=True)
class SelectionOutput:
    """Solution of the selection program.

    ``Zn`` (..., n, n): assignment of new points (rows) to new facilities (columns);
    ``Zo`` (..., n, m): assignment of new points to old points; ``u`` (..., n): how open each
    new point is as a facility. ``iterations`` and ``residual`` are diagnostics (max over the
    batch; the cvxpylayers path reports 0 iterations and its solver's own residual is not read).
    """

    Zn: torch.Tensor
    Zo: torch.Tensor
    u: torch.Tensor
    iterations: int = 0
    residual: float = 0.0
