"""Exact KNN-Shapley (Jia et al. 2019): closed-form Shapley values of the KNN utility."""

from __future__ import annotations

import torch

from hostcp_core.data import Dataset
from hostcp_core.device import resolve_device
from hostcp_core.progress import ProgressCallback, report
from hostcp_core.result import ValuationResult
from hostcp_core.valuer import Valuer
from hostcp_core.valuers._common import chunks, standardise

# Working arrays per chunk are (test points in the chunk) × N float64/int64; about ten of them
# are alive at once, so peak extra memory ≈ 10 · 8 bytes · max_elements: ≈ 170 MB at the CPU's
# 2^21 (a chunk then takes well under a second on a core, so progress is frequent), ≈ 2.7 GB at
# the GPU's 2^25 (fewer, larger kernels).
DEFAULT_MAX_ELEMENTS = 2**21
DEFAULT_MAX_ELEMENTS_CUDA = 2**25


def chunk_size(n_train: int, batch: int, max_elements: int = DEFAULT_MAX_ELEMENTS) -> int:
    """Test points per chunk: at most ``batch``, and at most ``max_elements`` distances."""
    return max(1, min(batch, max_elements // max(1, n_train)))


def stable_argsort_rows(dist: torch.Tensor) -> torch.Tensor:
    """Row-wise argsort with ties in index order, as ``argsort(stable=True)`` but cheaper: an
    unstable sort is exact wherever a row has no tied values, so only rows with ties are
    re-sorted stably (continuous features rarely tie; duplicated rows do)."""
    sorted_d, order = dist.sort(dim=1)
    tied = (sorted_d[:, 1:] == sorted_d[:, :-1]).any(dim=1)
    if bool(tied.any()):
        rows = tied.nonzero().flatten()
        order[rows] = dist[rows].argsort(dim=1, stable=True)
    return order


def knn_shapley_values(Xtr: torch.Tensor, ytr: torch.Tensor, Xte: torch.Tensor,
                       yte: torch.Tensor, k: int, *, batch: int = 256,
                       max_elements: int = DEFAULT_MAX_ELEMENTS,
                       progress: ProgressCallback | None = None) -> torch.Tensor:
    """Shapley values of U(S) = (1/k) Σ_{j ≤ min(k,|S|)} 1[y of j-th nearest in S = y_test],
    averaged over test points. Per test point, with training points sorted by distance
    α_1..α_N (ties in index order):
        s_{α_N} = 1[y_{α_N} = y]/N,
        s_{α_i} = s_{α_{i+1}} + (1[y_{α_i} = y] − 1[y_{α_{i+1}} = y])/k · min(k, i)/i.
    O(m N log N) time. The recursion is a reversed cumulative sum, done for a chunk of test
    points at a time: at most ``batch`` of them and at most ``max_elements`` test×train pairs,
    so memory is O(N + max_elements) whatever m and N are. Progress after every chunk (a chunk
    costs about max_elements·log N operations: well under a second on a CPU core at 2^22)."""
    N = Xtr.shape[0]
    i = torch.arange(1, N, dtype=torch.float64, device=Xtr.device)
    coef = torch.clamp(i, max=k) / (k * i)  # min(k, i) / (k i), i = 1..N−1
    total = torch.zeros(N, dtype=torch.float64, device=Xtr.device)
    m = Xte.shape[0]
    report(progress, "knn_shapley:test_points", 0, m)  # a cancel is honoured before any work
    for sl in chunks(m, chunk_size(N, batch, max_elements)):
        # exact distances (no matmul round-off), so ties are real ties, broken by index
        dist = torch.cdist(Xte[sl], Xtr, compute_mode="donot_use_mm_for_euclid_dist")
        order = stable_argsort_rows(dist)
        del dist
        match = (ytr[order] == yte[sl, None]).to(torch.float64)  # (b, N) in distance order
        steps = (match[:, :-1] - match[:, 1:]) * coef
        s = match[:, -1:] / N + torch.flip(torch.cumsum(torch.flip(steps, [1]), 1), [1])
        del steps
        s = torch.cat([s, match[:, -1:] / N], 1)
        total.scatter_add_(0, order.flatten(), s.flatten())
        report(progress, "knn_shapley:test_points", sl.stop, m)
    return total / m


class KNNShapley(Valuer):
    """Exact Shapley values of a K-nearest-neighbour classifier's test accuracy (soft, 1/K per
    matching neighbour), averaged over the test set; Euclidean distance on features
    standardised by the training set (``standardize=False`` uses them as given).

    Scales to millions of training points: test points go in chunks of at most ``batch_size``
    and at most ``max_elements`` test×train distances (memory O(n + max_elements), about 80
    bytes per element; None: 2^21 on a CPU, 2^25 on a GPU), on the GPU when ``device``
    resolves to CUDA."""

    name = "knn_shapley"

    def __init__(self, fraction: float = 0.2, seed: int = 0, device: str = "auto",
                 k: int = 10, standardize: bool = True, batch_size: int = 256,
                 max_elements: int | None = None):
        self.fraction = fraction
        self.seed = seed
        self.device = device
        self.k = k
        self.standardize = standardize
        self.batch_size = batch_size
        self.max_elements = max_elements

    def _fit(self, train: Dataset, test: Dataset, *,
             progress: ProgressCallback | None) -> ValuationResult:
        dev = resolve_device(self.device)
        max_elements = self.max_elements or (DEFAULT_MAX_ELEMENTS_CUDA if dev.type == "cuda"
                                             else DEFAULT_MAX_ELEMENTS)
        if self.standardize:
            Xtr, Xte = standardise(train, test)
        else:
            Xtr, Xte = train.X.astype("float64"), test.X.astype("float64")
        values = knn_shapley_values(
            torch.as_tensor(Xtr, device=dev), torch.as_tensor(train.y, device=dev),
            torch.as_tensor(Xte, device=dev), torch.as_tensor(test.y, device=dev), self.k,
            batch=self.batch_size, max_elements=max_elements, progress=progress)
        b = chunk_size(train.n, self.batch_size, max_elements)
        return ValuationResult.from_values(values.cpu().numpy(), self.fraction, self.name,
                                           params={"max_elements": max_elements},
                                           extra={"k": self.k, "device": str(dev),
                                                  "test_points_per_chunk": b})
