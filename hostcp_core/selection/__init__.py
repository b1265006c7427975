"""HOST-CP selection layer: the ε-regularised budgeted facility-location program.

``solve_selection`` solves it (batched, differentiable in the distances) with the native
semismooth-Newton solver or the cvxpylayers reference; ``SelectionLayer`` wraps it as a module
with budget K = fraction * n and distance normalisation; ``select_top_k`` takes the hard subset.
"""

from hostcp_core.selection._types import SelectionOutput, SolverError
from hostcp_core.selection.layer import (
    SelectionLayer,
    normalize_distances,
    select_top_k,
    solve_selection,
)

__all__ = [
    "SelectionLayer",
    "SelectionOutput",
    "SolverError",
    "normalize_distances",
    "select_top_k",
    "solve_selection",
]
