"""The third run (pool tightened by the detector) against the same code with the old order
(lowest Data-OOB first), per recommendation at 20%, paired over seeds; points."""
import numpy as np
import pandas as pd

D = "results/recommended/v3_2026-12-04"
k = ["dataset", "seed", "condition", "learner"]


def rec(path):
    d = pd.read_csv(path)
    return d[(d.method == "recommended") & (d.fraction == 0.2)].set_index(k)


A, B = rec(f"{D}/baseline_data_oob/rows.csv"), rec(f"{D}/rows.csv")
d = (B.holdout_accuracy - A.holdout_accuracy) * 100
print("recommendations with another winner:", int((B.winner != A.winner).sum()), "of", len(d),
      "; changed held-out:", int((d.abs() > 1e-9).sum()))
print(d.groupby(["condition", "learner"]).agg(["mean", lambda x: x.std() / np.sqrt(len(x))])
      .round(2))
print(d.groupby(["dataset", "condition", "learner"]).mean().round(1).to_string())
print("synthetic flipped per seed (base / new):")
both = pd.concat([A.flipped_share, B.flipped_share], axis=1, keys=["base", "new"])
print(both.loc["synthetic"].xs("flipped", level="condition"))
