"""The method catalogue: what each valuer is for, its parameters, whether it can use a GPU, what
it costs and the largest training set it accepts by default.

Parameters are read from each valuer's ``__init__`` (names, annotations, defaults) in its
source, without importing it (the API serves this and validates jobs with it, and must not load
torch to do so; tests/test_catalogue.py checks the reading against ``inspect``), so the
catalogue cannot drift from the code; their one-line descriptions come from ``PARAM_DOCS``
below or, failing that, from a ``name: text`` line of the class docstring (HOST-CP documents
its parameters that way). Costs were measured on the 2-core development machine, one torch
thread, 1000 test points (``benchmarks/valuer_times.py --sizes``, ``benchmarks/library_scale.py``;
figures in docs/RESULTS.md); they are rough guides, not promises. Everything here is
JSON-serialisable: the API's ``GET /v1/methods`` and ``hostcp methods`` print it.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from hostcp_core.valuer import METHODS

PURPOSES = ("subset", "mislabels", "both", "control")


@dataclass(frozen=True)
class Cost:
    """How a method's time grows, and the measurement it rests on."""

    model: str                  # the cost in words and O(·)
    exponent: float             # time ∝ n_train ** exponent, at the default settings
    ref_n: int                  # training rows of the reference measurement
    ref_seconds: float          # seconds at ref_n (1000 test points, 1 CPU thread)
    max_train: int | None       # the largest training set accepted by default (None: no limit)
    limit_reason: str = ""      # why, when there is a limit


# What each method is for, whether it can run on a GPU, and its cost. Reference times: the
# 1000-point table of benchmarks/valuer_times.py (results/valuer_times.md) and its --sizes
# growth table (results/scale/valuer_growth.md).
_INFO: dict[str, dict[str, Any]] = {
    "recommended": dict(
        purpose="subset",
        summary="The default: candidate subsets (HOST-CP, each valuer's stratified top set, "
                "the same restricted to the points Data-OOB and the calibrated label-error "
                "detector trust, coverage of HOST-CP's embedding, random) scored on a "
                "validation part of the test set with the learner you name; the best is "
                "returned, with every candidate's score.",
        gpu=True,
        cost=Cost("HOST-CP + Data-OOB + KNN-Shapley + the label-error detector (forest + "
                  "logistic) + per candidate up to n_seeds trainings of the learner, at most "
                  "0.6·n training points in all: linear in n; at 500 rows 2.0× HOST-CP alone "
                  "on average at a 20% subset, at most 2.7× in every one of 336 runs at "
                  "5–50% (docs/RESULTS.md, second run)", 1.0, 500, 7.6, None)),
    "hostcp": dict(
        purpose="both",
        summary="HOST-CP (the paper): a learned embedding and a differentiable facility-location "
                "layer trained with the model; selects a subset for the test set and scores "
                "every point.",
        gpu=True,
        cost=Cost("O(epochs · n) minibatch layer solves: linear in n; 0.23–0.33 ms per point "
                  "per epoch on one CPU core at wave=1 (12 epochs by default); the default "
                  "wave='auto' solves 16 minibatches at once from 16,384 points (0.19 ms; a "
                  "100k-row job in about 5 minutes on 2 cores); on an H200 GPU 64 at once, "
                  "replayed as CUDA graphs (0.02–0.035 ms per point per epoch; a 1M-row fit "
                  "in 3.8 minutes)",
                  1.0, 1000, 5.71, None)),
    "random": dict(
        purpose="control", gpu=False,
        summary="Uniform random values: the baseline every other method must beat.",
        cost=Cost("O(n)", 1.0, 1000, 0.001, None)),
    "facility_location": dict(
        purpose="control", gpu=False,
        summary="Greedy facility location on standardised raw features; ignores labels and "
                "the test set (a control for HOST-CP's learned embedding).",
        cost=Cost("a dense n × n similarity matrix and ⌈γn⌉ greedy picks, each a pass over "
                  "it: O(γ · n³) time, O(n²) memory (8·n² bytes per copy)",
                  3.0, 1000, 1.34, 5_000,
                  "greedy picks over a dense n × n matrix: time grows as n³ (about 3 minutes "
                  "at 5,000 rows on a quiet 2-core machine, 20 s at 2,000 and 11 minutes at "
                  "4,000 on a loaded one)")),
    "knn_shapley": dict(
        purpose="both", gpu=True,
        summary="Exact Shapley values of a K-nearest-neighbour classifier's test accuracy "
                "(Jia et al. 2019).",
        cost=Cost("O(m · n log n) for m test points (one sort of the training set per test "
                  "point); memory O(n + max_elements), in chunks of test points",
                  1.1, 1000, 0.15, None)),
    "data_oob": dict(
        purpose="mislabels", gpu=False,
        summary="Data-OOB (Kwon & Zou 2023): out-of-bag accuracy of a bagged tree ensemble; "
                "ignores the test set; the strongest flipped-label detector here.",
        cost=Cost("B trees, each fitted on a bag of min(n, 50k) rows and predicting all n "
                  "rows: up to 10k rows B = 800 bootstraps of n, above that B = 800·√(10k/n) "
                  "(≥ 100) bags of ≤ 50k rows, grown in parallel threads",
                  1.0, 1000, 7.19, None)),
    "loo": dict(
        purpose="both", gpu=True,
        summary="Leave-one-out: the change in test log-loss (or accuracy) when each point is "
                "removed and an L2 logistic regression retrained.",
        cost=Cost("n retrained models, each Newton step over all n points: O(n² · K · d) per "
                  "step", 2.0, 1000, 0.95, 20_000,
                  "n retrainings over n rows each: time grows as n² (about 6 minutes at "
                  "20,000 rows on one CPU core)")),
    "influence": dict(
        purpose="both", gpu=True,
        summary="Influence functions (Koh & Liang 2017): −∇L_testᵀ H⁻¹ ∇L(z_i) of an L2 "
                "logistic regression (or an MLP's head).",
        cost=Cost("one model fit and per-point gradients: linear in n; the exact Hessian costs "
                  "O(p³) in the parameter count p (method='auto' switches to CG above 3000 "
                  "parameters)", 1.0, 1000, 0.04, None)),
    "tracin": dict(
        purpose="both", gpu=True,
        summary="TracIn-CP (Pruthi et al. 2020): gradient dot products with the test set summed "
                "over training checkpoints.",
        cost=Cost("epochs of SGD plus per-point gradients at each checkpoint: linear in n",
                  1.0, 1000, 0.49, None)),
    "tmc_shapley": dict(
        purpose="both", gpu=False,
        summary="Truncated Monte-Carlo Data Shapley (Ghorbani & Zou 2019): marginal accuracy "
                "gains over random permutations, each refitting the learner point by point.",
        cost=Cost("up to max_permutations permutations, each refitting a logistic regression "
                  "on up to n growing prefixes: O(T · n · fit(n)), about quadratic in n per "
                  "permutation", 2.0, 1000, 1934.0, 2_000,
                  "each of up to 1000 permutations refits the learner up to n times: about "
                  "30 minutes at 1,000 rows and 2 hours at 2,000 on one CPU core "
                  "(distributed over workers the limit grows with √workers)")),
    "dvrl": dict(
        purpose="both", gpu=True,
        summary="DVRL (Yoon et al. 2020): a data-value estimator trained by REINFORCE on the "
                "validation (test) score of a predictor trained on its selections.",
        cost=Cost("iterations × a predictor trained on a batch of min(batch_size, n) rows: "
                  "flat in n above batch_size (2000 by default) apart from one linear pass to "
                  "score every row; long at the defaults (2000 iterations)",
                  0.0, 2000, 540.0, None)),
}

# One line per parameter. Names shared by every valuer first, then per method.
_COMMON_DOCS = {
    "fraction": "γ: the fraction of the training set in the selected subset (0 < γ ≤ 1).",
    "seed": "Random seed; the same seed gives the same values.",
    "device": "'auto' (CUDA when present), 'cpu' or 'cuda'.",
}
PARAM_DOCS: dict[str, dict[str, str]] = {
    "random": {},
    "facility_location": {
        "class_conditional": "A point may represent only points of its own label.",
    },
    "knn_shapley": {
        "k": "K, the number of neighbours of the KNN classifier.",
        "standardize": "Z-score features by the training set before distances.",
        "batch_size": "Test points per chunk, at most.",
        "max_elements": "Test × training distances per chunk, at most: bounds memory "
                        "(~80 bytes each).",
    },
    "data_oob": {
        "n_estimators": "B, the number of trees; None: 800 up to 10k rows, then 800·√(10k/n), "
                        "at least 100.",
        "max_samples": "Bag size as a fraction of n (drawn with replacement); None: 1.0 up to "
                       "50k rows, then 50k/n.",
        "max_features": "Features tried per split (sklearn's max_features).",
        "max_depth": "Tree depth limit; None grows trees fully.",
        "n_jobs": "Trees grown at once in threads; -1 uses every core.",
    },
    "loo": {
        "metric": "'log_loss' (test cross-entropy) or 'accuracy'.",
        "l2": "L2 penalty of the logistic regression.",
        "tol": "Gradient tolerance every retrained model reaches.",
        "max_iter": "Newton steps per retrained model, at most.",
    },
    "influence": {
        "model": "'logreg' (L2 logistic regression) or 'mlp'.",
        "method": "Inverse-Hessian product: 'exact', 'cg', 'lissa' or 'auto' (exact up to "
                  "3000 parameters).",
        "l2": "L2 penalty of the trained model.",
        "damping": "Added to the Hessian's diagonal (needed for an indefinite MLP Hessian).",
        "last_layer": "With model='mlp': use only the head (refitted to convergence).",
        "hidden": "Hidden layer widths of the MLP.",
        "epochs": "Training epochs of the MLP.",
        "lr": "Adam learning rate of the MLP.",
        "cg_tol": "Conjugate-gradient tolerance.",
        "cg_max_iter": "Conjugate-gradient iterations, at most.",
        "lissa_depth": "LiSSA recursion depth.",
        "lissa_batch": "LiSSA minibatch size.",
        "lissa_samples": "LiSSA repetitions averaged.",
        "lissa_scale": "LiSSA scaling of the Hessian; None picks it from the data.",
        "self_influence": "Score −∇L_iᵀ H⁻¹ ∇L_i instead (mislabelled points come out lowest).",
    },
    "tracin": {
        "hidden": "Hidden layer widths of the MLP.",
        "epochs": "Epochs of plain SGD on the training set.",
        "lr": "SGD learning rate.",
        "lr_decay": "Learning rate multiplier after each epoch.",
        "batch_size": "SGD minibatch size.",
        "n_checkpoints": "Checkpoints whose gradient products are summed.",
        "last_layer": "Use only the head's gradient (closed form, fast).",
        "self_influence": "Score −Σ η‖∇ℓ(z_i)‖² instead (mislabelled points come out lowest).",
        "grad_batch": "Points per batch of per-example gradients.",
    },
    "tmc_shapley": {
        "learner": "The utility's learner: 'logreg' or 'centroid'.",
        "tolerance": "Truncate a permutation once the score is within this fraction of the "
                     "full-data score.",
        "patience": "Consecutive points within tolerance before truncating.",
        "err": "Stop once the convergence error falls below this.",
        "check_every": "Permutations per chunk between convergence checks.",
        "max_permutations": "Permutations, at most.",
        "n_bootstrap": "Bootstrap resamples of the test set for the full-data score.",
    },
    "dvrl": {
        "iterations": "REINFORCE steps of the estimator.",
        "batch_size": "Training points per step (min with n).",
        "inner_iterations": "Predictor epochs per step.",
        "batch_size_predictor": "Predictor minibatch size.",
        "predictor_hidden": "Predictor hidden widths; () is logistic regression.",
        "predictor_lr": "Predictor learning rate.",
        "hidden_dim": "Estimator hidden width.",
        "comb_dim": "Estimator width after combining with the residual.",
        "layer_number": "Estimator layers.",
        "learning_rate": "Estimator learning rate.",
        "threshold": "Selection-probability band [1 − threshold, threshold] kept by the "
                     "penalty.",
        "penalty": "Weight of the selection-probability penalty.",
        "metric": "Validation reward: 'auc' or 'accuracy'.",
        "baseline": "REINFORCE baseline: 'fixed' or 'moving_average'.",
        "window": "Steps in the moving-average baseline.",
        "epsilon": "Clamp for log-probabilities.",
        "restarts": "Fresh restarts of the estimator when it collapses (all values equal); "
                    "if every attempt collapses the run fails.",
    },
    "recommended": {
        "hostcp_params": "Parameters of the HOST-CP fit the candidates share (None: its defaults).",
        "oob_params": "Parameters of the Data-OOB fit (detector and top set; None: defaults).",
    },
    # the rest of HOST-CP's parameters are documented in its docstring ("name: text" lines)
    "hostcp": {
        "epochs": "Epochs of joint training (model, embedding and selection layer).",
        "warmup_epochs": "First epochs whose scores are not kept (must be < epochs).",
        "batch_size": "Minibatch size: the points of one selection problem.",
        "hidden": "Hidden layer widths of the classifier.",
        "embed_dim": "Dimension of the learned embedding h.",
        "embed_width": "Hidden width of the embedding (and cost) network.",
        "lr": "Adam learning rate of the classifier.",
        "embed_lr": "Adam learning rate of the embedding.",
        "lookahead_lr": "Step size α of the one-step look-ahead θ̂ = θ − α∇θL.",
        "weight_decay": "Adam weight decay of the classifier.",
    },
}


def _valuer_source(method: str) -> ast.ClassDef:
    """The valuer's class as parsed from its module's source (the module is not imported)."""
    module, cls_name = METHODS[method].split(":")
    spec = importlib.util.find_spec(module)
    tree = ast.parse(open(spec.origin, encoding="utf-8").read())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls_name:
            return node
    raise LookupError(f"{METHODS[method]}: no class {cls_name} in {spec.origin}")


def _init_source(cls: ast.ClassDef) -> ast.FunctionDef:
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            return node
    raise LookupError(f"{cls.name} defines no __init__ of its own")


def _constant(node: ast.expr) -> Any:
    """A default's value: a literal, or arithmetic on literals (``2 ** 22``)."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        if any(isinstance(n, ast.Name | ast.Attribute | ast.Call) for n in ast.walk(node)):
            return ast.unparse(node)  # an expression of names: shown as written
        return eval(compile(ast.Expression(node), "<default>", "eval"), {"__builtins__": {}})


def _docstring_line(doc: str, name: str) -> str | None:
    """The first sentence of a ``name: text`` entry (with its indented continuation lines)."""
    m = re.search(rf"^{re.escape(name)}: (.+(?:\n(?: {{2,}}).+)*)", doc, re.MULTILINE)
    if not m:
        return None
    text = " ".join(part.strip() for part in m.group(1).splitlines())
    # the first sentence: a full stop followed by a capital (not "eq. 12" or "e.g. x")
    first = re.split(r"(?<=\.)\s+(?=[A-Z])", text, maxsplit=1)[0]
    if len(first) > 240:
        first = first[:239].rsplit(" ", 1)[0] + "…"
    return first[:1].upper() + first[1:]


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return repr(v)


def parameters(method: str) -> list[dict]:
    """name, type (the annotation as written), default and a one-line doc per parameter."""
    cls = _valuer_source(method)
    args = _init_source(cls).args
    positional = args.posonlyargs + args.args
    # defaults align with the last positional arguments; keyword-only ones pair one to one
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    pairs = list(zip(positional, defaults, strict=True))[1:]  # without self
    pairs += list(zip(args.kwonlyargs, args.kw_defaults, strict=True))
    doc = ast.get_docstring(cls) or ""
    out = []
    for arg, default in pairs:
        text = (PARAM_DOCS.get(method, {}).get(arg.arg) or _COMMON_DOCS.get(arg.arg)
                or _docstring_line(doc, arg.arg) or "")
        out.append({"name": arg.arg,
                    "type": None if arg.annotation is None else ast.unparse(arg.annotation),
                    "default": None if default is None else _jsonable(_constant(default)),
                    "required": default is None, "doc": text})
    return out


def method_info(method: str) -> dict:
    """One method's catalogue entry (JSON-able)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    info = _INFO[method]
    cost = asdict(info["cost"])
    return {"name": method, "purpose": info["purpose"], "summary": info["summary"],
            "gpu": info["gpu"], "cost": cost, "max_train": cost["max_train"],
            "parameters": parameters(method)}


def catalogue() -> list[dict]:
    """Every method in ``METHODS``, in its order."""
    return [method_info(m) for m in METHODS]


def max_train(method: str, *, workers: int = 1) -> int | None:
    """The largest training set ``method`` accepts by default (None: no limit). TMC-Shapley's
    permutations split over workers, so its limit grows with √workers (its cost is ~n²)."""
    limit = _INFO[method]["cost"].max_train
    if limit is not None and method == "tmc_shapley" and workers > 1:
        limit = int(limit * math.sqrt(workers))
    return limit


def estimate_seconds(method: str, n_train: int) -> float:
    """A rough time on one CPU thread of the development machine, from the reference
    measurement and the growth exponent (1000 test points; a guide, not a promise)."""
    c = _INFO[method]["cost"]
    return c.ref_seconds * (max(1, n_train) / c.ref_n) ** c.exponent


def check_feasible(method: str, n_train: int, n_test: int, params: dict | None = None, *,
                   workers: int = 1) -> None:
    """Raise ``ValueError`` when ``method`` cannot run on ``n_train`` training rows by default,
    naming the limit, why, and the methods that do accept that size. ``n_test`` and ``params``
    are checked for validity (parameter names must exist) but do not move the limits."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if n_train < 1 or n_test < 1:
        raise ValueError(f"need at least one training and one test row, got {n_train} and "
                         f"{n_test}")
    if params:
        known = {p["name"] for p in parameters(method)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"method {method!r} has no parameter(s) {', '.join(unknown)}")
    limit = max_train(method, workers=workers)
    if limit is None or n_train <= limit:
        return
    fit = [m for m in METHODS if (max_train(m, workers=workers) or math.inf) >= n_train]
    raise ValueError(
        f"{method} accepts at most {limit:,} training rows ({_INFO[method]['cost'].limit_reason}); "
        f"this training set has {n_train:,}. Methods that accept {n_train:,} rows: "
        f"{', '.join(fit)}")
