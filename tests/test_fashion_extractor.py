"""The Fashion-MNIST feature extractor is reproducible: its weights and features do not depend on
the caller's torch thread count, nor on the CPU's vector instruction set.

Training is chaotic: a float32 rounding difference in one step (a threaded reduction, an AVX2
instead of an AVX-512 kernel) grows to weight differences of several percent after three epochs,
and the extractor is cached by whichever process trains it first, so every later run's
fashion_mnist features (and its out-of-fold probabilities) followed that process's thread count
(docs/RESULTS.md, issue 16). Synthetic images: the Debian dataset package is not needed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hostcp_core.datasets.fashion_mnist import CNNFeatureExtractor

ROOT = Path(__file__).resolve().parents[1]


def _images(n: int = 1536, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """10 classes of 28x28 uint8 images: a class template plus noise."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, (10, 28, 28))
    y = rng.integers(0, 10, n)
    X = 0.5 * templates[y] + rng.uniform(0, 128, (n, 28, 28))
    return X.astype(np.uint8), y.astype(np.int64)


def _fingerprint(threads: int) -> tuple[str, str]:
    """Hashes of the trained weights and of the features, trained with the caller's torch set
    to ``threads`` threads."""
    X, y = _images()
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ext = CNNFeatureExtractor(epochs=2, batch_size=64, seed=0).fit(X, y)
        feats = ext.transform(X[:256])
    finally:
        torch.set_num_threads(prev)
    w = np.concatenate([v.numpy().ravel() for v in ext.model_.state_dict().values()])
    h = (hashlib.sha256(np.ascontiguousarray(w).tobytes()).hexdigest(),
         hashlib.sha256(np.ascontiguousarray(feats).tobytes()).hexdigest())
    assert torch.get_num_threads() == prev   # the caller's setting is left as it was
    return h


def test_extractor_does_not_depend_on_the_callers_thread_count():
    one = _fingerprint(1)
    assert _fingerprint(2) == one
    assert _fingerprint(3) == one


def test_extractor_does_not_depend_on_the_cpu_vector_isa():
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        pytest.skip("the comparison needs an AVX-512 CPU (run as is and capped at AVX2)")
    code = ("import sys; sys.path.insert(0, 'tests'); "
            "from test_fashion_extractor import _fingerprint; print(*_fingerprint(1))")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
           "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout.split()
    assert tuple(out) == _fingerprint(1)


def test_cached_extractor_gives_the_same_features(tmp_path):
    X, y = _images(512)
    ext = CNNFeatureExtractor(epochs=1, batch_size=64, seed=0).fit(X, y)
    ext.save(tmp_path / "cnn.pt")
    loaded = CNNFeatureExtractor(epochs=1).load(tmp_path / "cnn.pt")
    feats = ext.transform(X[:100])
    assert feats.dtype == np.float32 and feats.shape == (100, 64)
    assert np.array_equal(loaded.transform(X[:100]), feats)
