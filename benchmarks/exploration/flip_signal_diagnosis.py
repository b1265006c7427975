"""Why does HOST-CP rank flipped labels badly on some datasets (UCI Adult)? A one-off diagnosis.

On the paper protocol's split (500 training points, 10% flipped, the valuation half of the test
set) it prints the flip ROC-AUC (low score = flip) of each of HOST-CP's per-point scores, per
class, and of two static signals at HOST-CP's final model: the gradient alignment
⟨∇ valuation loss, ∇ℓ_j⟩ (all parameters, head only) and the model's probability of the given
label.

    python benchmarks/exploration/flip_signal_diagnosis.py --dataset adult --seed 0
    python benchmarks/exploration/flip_signal_diagnosis.py --dataset adult --seed 0 \
        --params '{"recalibrate": true}'
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hostcp_core import flip_labels, get_valuer, split_test  # noqa: E402
from hostcp_core.datasets import load_paper_dataset  # noqa: E402


def auc_low_is_flip(flipped: np.ndarray, score: np.ndarray) -> float:
    return float(roc_auc_score(flipped, -score))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="adult")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--params", default="{}", help="HostCP parameter overrides (JSON)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    train, test = load_paper_dataset(args.dataset, 500, 1000, seed=args.seed)
    valuation, _ = split_test(test, 0.5, seed=args.seed)
    noisy, flipped_idx = flip_labels(train, 0.1, seed=args.seed)
    flipped = np.zeros(train.n, bool)
    flipped[flipped_idx] = True
    hostcp = get_valuer("hostcp", fraction=0.2, seed=args.seed, **json.loads(args.params))
    hostcp.fit(noisy, valuation)
    print(f"{args.dataset} seed {args.seed}: class counts {np.bincount(noisy.y).tolist()}")
    for name, score in hostcp.scores_.items():
        per_class = {int(c): round(auc_low_is_flip(flipped[noisy.y == c], score[noisy.y == c]), 3)
                     for c in np.unique(noisy.y) if 0 < flipped[noisy.y == c].sum()
                     < (noisy.y == c).sum()}
        print(f"  score {name:7s} AUC {auc_low_is_flip(flipped, score):.3f}  per class {per_class}")
    model = hostcp.model_
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    X, y = torch.as_tensor(noisy.X), torch.as_tensor(noisy.y)
    Xv, yv = torch.as_tensor(valuation.X), torch.as_tensor(valuation.y)

    def loss(p, x, t):
        return F.cross_entropy(functional_call(model, (p, buffers), (x,)), t)

    g_val = grad(loss)(params, Xv, yv)
    g_pts = vmap(grad(lambda p, x, t: loss(p, x[None], t[None])), in_dims=(None, 0, 0))(params,
                                                                                      X, y)
    for part, keys in (("all", list(params)), ("head", [k for k in params if "head" in k])):
        dots = sum((g_pts[k].flatten(1) * g_val[k].flatten()[None]).sum(1) for k in keys)
        print(f"  static alignment ({part}) AUC {auc_low_is_flip(flipped, dots.numpy()):.3f}")
    with torch.no_grad():
        p_given = torch.softmax(model(X), 1)[torch.arange(train.n), y].numpy()
    print(f"  static p(given label) AUC {auc_low_is_flip(flipped, p_given):.3f}")


if __name__ == "__main__":
    main()
