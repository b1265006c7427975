"""How far 20% subsets are from the full (noisy) training set, per dataset x labels x learner:
the recommendation, random, an unattainable oracle (the best candidate per seed, picked on the
held-out part itself) and the best candidate kind per cell (picked after the fact).

    python results/recommended/v3_2026-12-04/full_gap.py results/recommended/v3_2026-12-04/rows.csv
"""
import sys

import numpy as np
import pandas as pd

r = pd.concat([pd.read_csv(p) for p in sys.argv[1:]])
full = r[r.method == "full"].set_index(["dataset", "seed", "condition", "learner"])
full = full.holdout_accuracy
s = r[(r.fraction == 0.2) & (r.method != "full")]
rows = []
for (ds, cond, lr), g in s.groupby(["dataset", "condition", "learner"]):
    piv = g.pivot_table(index="seed", columns="method", values="holdout_accuracy")
    f = np.array([full[(ds, sd, cond, lr)] for sd in piv.index])
    cand = piv.drop(columns=["recommended"])
    oracle = cand.max(axis=1).values       # per seed, chosen on the held-out: not attainable
    best = cand.mean()                     # one candidate kind per cell, after the fact
    rows.append(dict(dataset=ds, cond=cond, learner=lr,
                     rec=100 * (piv.recommended.values - f).mean(),
                     rand=100 * (piv.random.values - f).mean(),
                     oracle=100 * (oracle - f).mean(), best_kind=100 * (best.max() - f.mean()),
                     best_kind_name=best.idxmax()))
t = pd.DataFrame(rows)
pd.set_option("display.width", 200)
print(t.round(1).to_string(index=False))
for c in ["rec", "rand", "oracle", "best_kind"]:
    within = {k: int((g[c] >= -1).sum()) for k, g in t.groupby(["cond", "learner"])}
    print(c, "within 1 pt (>= -1):", within, "mean", round(t[c].mean(), 1))
