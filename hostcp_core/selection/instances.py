"""Random clustered selection instances with exact distances (tests and benchmarks)."""

from __future__ import annotations

import torch


def clustered_distances(
    n: int,
    m: int,
    batch: int | None = None,
    seed: int = 0,
    clusters: int = 4,
    spread: float = 0.1,
    dim: int = 5,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Dn, Do) for n new and m old points drawn around ``clusters`` Gaussian centres.

    Distances are computed without the matmul shortcut of torch.cdist (that one is off by about
    1e-8 and leaves a non-zero diagonal, which spoils finite-difference checks).
    """
    g = torch.Generator().manual_seed(seed)
    B = 1 if batch is None else batch
    centres = torch.randn(B, clusters, dim, generator=g, dtype=torch.float64)
    which = torch.randint(0, clusters, (B, n + m), generator=g)
    pts = centres[torch.arange(B)[:, None], which]
    pts = pts + spread * torch.randn(B, n + m, dim, generator=g, dtype=torch.float64)
    D = torch.cdist(pts, pts, compute_mode="donot_use_mm_for_euclid_dist")
    Dn, Do = D[:, :n, :n].contiguous(), D[:, :n, n:].contiguous()
    if batch is None:
        Dn, Do = Dn[0], Do[0]
    return Dn.to(dtype=dtype, device=device), Do.to(dtype=dtype, device=device)
