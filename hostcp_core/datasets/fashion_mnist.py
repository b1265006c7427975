"""Fashion-MNIST (Debian ``dataset-fashion-mnist``) through a frozen CNN feature extractor: the
CIFAR-10 / ResNet-18 stand-in (DESIGN §5).

The extractor is trained once on a fixed part of the 60000 training images that the loader
never returns (so the features carry no information about the points being valued), then
cached under the data dir and frozen.
"""

from __future__ import annotations

import copy
import gzip
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hostcp_core.data import Dataset, make_dataset
from hostcp_core.datasets._common import data_dir, missing, subsample

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")
EXTRACTOR_ROWS = 10000   # training images reserved for the extractor
_SPLIT_SEED = 20240501   # fixed, so every loader seed shares one extractor and one split


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format; gzipped) as a numpy array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _raw(part: str) -> tuple[np.ndarray, np.ndarray]:
    images = SOURCE / f"{part}-images-idx3-ubyte.gz"
    labels = SOURCE / f"{part}-labels-idx1-ubyte.gz"
    if not images.is_file() or not labels.is_file():
        raise missing("Debian package dataset-fashion-mnist",
                      "apt-get install dataset-fashion-mnist")
    return read_idx(images), read_idx(labels).astype(np.int64)


class _CNN(nn.Module):
    def __init__(self, feature_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3)
        self.conv2 = nn.Conv2d(16, 32, 3)
        self.fc = nn.Linear(32 * 5 * 5, feature_dim)
        self.head = nn.Linear(feature_dim, len(CLASSES))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class CNNFeatureExtractor:
    """A small CNN trained with Adam on labelled 28×28 images; ``transform`` returns its
    penultimate-layer activations (``feature_dim`` values per image). Both are bit-reproducible:
    they do not depend on the caller's torch thread count or the CPU's instruction set."""

    def __init__(self, feature_dim: int = 64, epochs: int = 3, batch_size: int = 128,
                 lr: float = 1e-3, seed: int = 0):
        self.feature_dim = feature_dim
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.seed = seed

    def fit(self, images: np.ndarray, labels: np.ndarray) -> CNNFeatureExtractor:
        # Trained in float64 on one thread, kept as the float32 rounding of the result. Training
        # is chaotic: in float32 a rounding difference in one step (a reduction split over more
        # threads, an AVX2 instead of an AVX-512 kernel) grew to weight differences of several
        # percent after three epochs, so the cached extractor, and every later run's features,
        # followed the thread count of whichever process trained it first (docs/RESULTS.md,
        # issue 16). One thread fixes the order of every sum; float64 keeps a different
        # instruction set's differences near 1e-14, below float32's resolution.
        with _one_thread():
            torch.manual_seed(self.seed)
            gen = torch.Generator().manual_seed(self.seed)
            model = _CNN(self.feature_dim).double()
            opt = torch.optim.Adam(model.parameters(), lr=self.lr)
            X, y = _as_tensor(images), torch.as_tensor(labels)
            for _ in range(self.epochs):
                perm = torch.randperm(len(y), generator=gen)
                for s in range(0, len(y), self.batch_size):
                    b = perm[s:s + self.batch_size]
                    loss = F.cross_entropy(model(X[b]), y[b])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        self.model_ = model.float().eval()
        return self

    @torch.no_grad()
    def transform(self, images: np.ndarray) -> np.ndarray:
        """Features in float64 from the float32 weights, on one thread, rounded to float32: the
        same bits whatever the thread count or instruction set (float32 arithmetic differed in
        the last bits between AVX2 and AVX-512 kernels)."""
        model = copy.deepcopy(self.model_).double()
        X = _as_tensor(images)
        with _one_thread():
            out = [model.features(X[s:s + 2048]) for s in range(0, len(X), 2048)]
        return torch.cat(out).numpy().astype(np.float32)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(self.model_.state_dict(), tmp)
        tmp.replace(path)   # atomic: a concurrent reader never sees half a file

    def load(self, path: Path) -> CNNFeatureExtractor:
        self.model_ = _CNN(self.feature_dim)
        self.model_.load_state_dict(torch.load(path, weights_only=True))
        self.model_.eval()
        return self


def _as_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(images, dtype=torch.float64).div(255.0).unsqueeze(1)


@contextmanager
def _one_thread():
    """torch on one thread inside the block, the caller's setting restored after it."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def load_fashion_mnist(n_train: int | None = 2000, n_test: int | None = 2000, *, seed: int = 0,
                       data_path=None, extractor_epochs: int = 3) -> tuple[Dataset, Dataset]:
    """Frozen-CNN features of Fashion-MNIST: ``n_train`` images drawn at random (seeded) from
    the 50000 training images not used by the extractor, ``n_test`` from the 10000 test
    images. The extractor is trained on the first run (about 15 s; always on one thread, in
    float64, so the cache holds the same weights whoever trains it) and cached in the data dir."""
    X_all, y_all = _raw("train")
    X_te_all, y_te_all = _raw("t10k")
    perm = np.random.default_rng(_SPLIT_SEED).permutation(len(y_all))
    ext_rows, pool = perm[:EXTRACTOR_ROWS], np.sort(perm[EXTRACTOR_ROWS:])
    extractor = CNNFeatureExtractor(epochs=extractor_epochs, seed=0)
    # "_f64": extractors cached before training was made deterministic (float32, the caller's
    # thread count) are not read
    cache = data_dir(data_path) / f"fashion_mnist_cnn_f64_e{extractor_epochs}.pt"
    if cache.is_file():
        extractor.load(cache)
    else:
        extractor.fit(X_all[ext_rows], y_all[ext_rows]).save(cache)
    rng = np.random.default_rng(seed)
    tr = pool[subsample(len(pool), n_train, rng)]
    te = subsample(len(y_te_all), n_test, rng)
    names = [str(k) for k in range(len(CLASSES))]
    train = make_dataset(extractor.transform(X_all[tr]), y_all[tr].astype(str), classes=names,
                         name="fashion_mnist")
    test = make_dataset(extractor.transform(X_te_all[te]), y_te_all[te].astype(str),
                        classes=names, name="fashion_mnist-test")
    return train, test
