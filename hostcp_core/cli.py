"""The library's command: ``hostcp value`` values a training set for a test set.

``register(subparsers)`` adds it to a parser; the installed ``hostcp`` command is composed in
``app.cli`` (the library's commands plus the service's). ``python -m hostcp_core.cli`` runs the
library's commands alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from hostcp_core.data import split_test
from hostcp_core.errors import DataError
from hostcp_core.evaluation.depth import DEFAULT_DEPTH, DEPTHS, evaluate_subset
from hostcp_core.loaders import load_train_test
from hostcp_core.progress import Progress
from hostcp_core.result import subset_size, to_jsonable
from hostcp_core.valuer import available_methods, get_valuer

SAMPLE_PREFIX = "sample:"


def resolve_sample(path: str) -> str:
    """``sample:train`` / ``sample:test`` name the small bundled dataset."""
    if not path.startswith(SAMPLE_PREFIX):
        return path
    name = path[len(SAMPLE_PREFIX):]
    ref = resources.files("hostcp_core") / "sample_data" / f"{name}.csv"
    if not ref.is_file():
        raise DataError(f"{path}: no such bundled sample (use sample:train or sample:test)")
    return str(ref)


def _parse_params(items: list[str]) -> dict:
    params = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--param {item!r}: expected KEY=VALUE")
        key, raw = item.split("=", 1)
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


class _Bar:
    """A tqdm bar fed by progress events (one bar per stage)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.stage = None

    def __call__(self, p: Progress) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if p.stage != self.stage:
            self.close()
            self.stage = p.stage
            self.bar = tqdm(total=p.total, desc=p.stage, unit="step", file=sys.stderr,
                            leave=False)
        self.bar.n = p.step
        if p.loss is not None:
            self.bar.set_postfix(epoch=p.epoch, loss=f"{p.loss:.4f}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_value(args: argparse.Namespace) -> int:
    train_path, test_path = resolve_sample(args.train), resolve_sample(args.test)
    params = _parse_params(args.param)
    valuer = get_valuer(args.method, fraction=args.fraction, seed=args.seed, **params)
    if not 0.0 < args.fraction <= 1.0:
        raise ValueError(f"--fraction must be in (0, 1], got {args.fraction}")
    train, test = load_train_test(train_path, test_path, label_column=args.label_column,
                                  id_column=args.id_column)
    valuation, holdout = split_test(test, args.holdout, seed=args.seed)
    bar = _Bar(not args.quiet)
    try:
        result = valuer.fit(train, valuation, progress=bar)
    finally:
        bar.close()

    summary = {
        **result.summary(),
        "train": str(args.train), "test": str(args.test),
        "n_train": train.n, "n_test_valuation": valuation.n, "n_test_holdout": holdout.n,
        "classes": list(train.classes),
    }
    summary.pop("extra", None)
    check = _subset_check(args, train, holdout, result)
    if check is not None:
        summary["holdout_accuracy"] = check
    _write_outputs(Path(args.out), result, train.ids, summary)
    said = ("" if check is None else f"; held-out accuracy {check['subset']:.4f} (random subset "
            f"of the same size: {check['random_subset']:.4f}, {args.evaluation} evaluation)")
    print(f"{args.method}: selected {len(result.selected)} of {train.n} points{said}; wrote "
          f"{args.out}/subset.csv, values.csv, summary.json")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from hostcp_core.catalogue import catalogue

    entries = [m for m in catalogue() if m["name"] in available_methods()]
    if args.json:
        print(json.dumps(entries, indent=2, default=to_jsonable))
        return 0
    for m in entries:
        limit = "any size" if m["max_train"] is None else f"up to {m['max_train']:,} rows"
        print(f"{m['name']}  [{m['purpose']}; {'GPU or CPU' if m['gpu'] else 'CPU'}; {limit}]")
        print(f"    {m['summary']}")
        print(f"    cost: {m['cost']['model']}")
        params = ", ".join(f"{p['name']}={p['default']!r}" for p in m["parameters"])
        print(f"    parameters: {params or '-'}")
    return 0


def _subset_check(args: argparse.Namespace, train, holdout, result) -> dict | None:
    """The subset against a random subset of the same size, scored on the held-out part of the
    test set, at the chosen depth: "full" trains on every point, ``--eval-repeats`` seeds;
    "quick" trains once per subset on a capped sample (``evaluate_subset``); "none" skips."""
    k = subset_size(train.n, args.fraction)
    if args.evaluation == "none":
        return None
    if args.evaluation == "quick":
        ev = evaluate_subset(train, holdout, result.ranking(), result.selected, depth="quick",
                             fractions=(), seed=args.seed)
        return {"subset": ev.subset["accuracy"], "random_subset": ev.random_subset["accuracy"],
                "subset_size": k, "repeats": 1, "depth": "quick", "sampling": ev.sampling}
    from hostcp_core.models import accuracy, train_classifier  # torch: only when used

    rng = np.random.default_rng(args.seed)
    eval_seeds = range(args.seed, args.seed + args.eval_repeats)

    def holdout_acc(idx: np.ndarray) -> float:
        return float(np.mean([accuracy(train_classifier(train.X[idx], train.y[idx],
                                                        train.n_classes, seed=s),
                                       holdout.X, holdout.y) for s in eval_seeds]))

    acc_random = float(np.mean([holdout_acc(rng.choice(train.n, k, replace=False))
                                for _ in range(args.eval_repeats)]))
    return {"subset": holdout_acc(result.selected), "random_subset": acc_random,
            "subset_size": k, "repeats": args.eval_repeats, "depth": "full"}


def _write_outputs(out: Path, result, ids, summary: dict) -> None:
    """Write into a temporary folder inside ``out``, then move files in: nothing half-written."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".hostcp-", dir=out))
    try:
        result.save(tmp, ids)  # values.csv, subset.csv, result.json
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=to_jsonable))
        for name in ("values.csv", "subset.csv", "result.json", "summary.json"):
            (tmp / name).replace(out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def register(sub) -> None:
    """Add the library's commands to ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser("value", help="value a training set for a test set")
    p.add_argument("--train", required=True, help="training file (CSV, Parquet, NPZ, LIBSVM) "
                   "or sample:train")
    p.add_argument("--test", required=True, help="test file or sample:test")
    p.add_argument("--label-column", default=None)
    p.add_argument("--id-column", default=None)
    p.add_argument("--method", default="recommended",
                   help=f"one of: {', '.join(available_methods())} (default: recommended)")
    p.add_argument("--fraction", type=float, default=0.2, help="γ, the subset fraction")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout", type=float, default=0.3,
                   help="fraction of the test set kept out of valuation, for evaluation")
    p.add_argument("--evaluation", choices=DEPTHS, default=DEFAULT_DEPTH,
                   help="the subset-vs-random check: quick (default: one fit per subset on a "
                   "capped sample, bounded cost at any size), full (every point, "
                   "--eval-repeats seeds) or none")
    p.add_argument("--eval-repeats", type=int, default=3, help="seeds of a full evaluation")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="method parameter (JSON value), repeatable")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_value)

    p = sub.add_parser("methods", help="the method catalogue: purpose, GPU, cost, size limit, "
                       "parameters")
    p.add_argument("--json", action="store_true", help="print the catalogue as JSON (the same "
                   "as GET /v1/methods)")
    p.set_defaults(func=cmd_methods)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hostcp", description="Data valuation with HOST-CP "
                                     "and the strongest data valuers.")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def run(args: argparse.Namespace) -> int:
    """Run a parsed command; bad input ends with a one-line error and exit code 2."""
    try:
        return int(args.func(args) or 0)
    except (DataError, ValueError) as exc:
        print(f"hostcp: error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
