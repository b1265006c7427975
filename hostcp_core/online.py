"""The online step of a fitted HOST-CP: select from a new minibatch given the set selected so far.

``OnlineSelector(hostcp).fit(train, selected)`` keeps what HOST-CP learned (the classifier
f(·; θ), the embedding h(·; φ), the representation scales) and the selected set O. Then
``select_batch(X, y)`` runs exactly the per-minibatch selection of Algorithm 1 on a new batch
D_t: embed, take the k selected points nearest to the batch, solve the facility-location layer,
take the top ⌈γ|D_t|⌉ by u. ``add`` grows O with chosen rows, so a stream can be filtered batch
by batch. ``save``/``load`` use a plain ``.npz`` (no pickle) with the state dicts and config.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hostcp_core.errors import DataError, NotFittedError
from hostcp_core.result import subset_size

FORMAT_VERSION = 1


@dataclass(frozen=True)
class BatchSelection:
    """The online step's answer for one batch of m rows.

    ``selected``: (m,) bool, the rows the step selects (⌈γm⌉ of them); ``u`` (m,): how open each
    row is as a facility (the layer's relaxed selection); ``represented_by_old`` (m,): for each
    row, the position in the selected set of the old point that represents it most, or -1 when
    a row of the batch does; ``represented_by_row`` (m,): the batch row that represents it most,
    or -1 when an old point does.
    """

    selected: np.ndarray
    u: np.ndarray
    represented_by_old: np.ndarray
    represented_by_row: np.ndarray


class OnlineSelector:
    """HOST-CP's online facility-location step on a fitted model.

    Parameters
    ----------
    hostcp: a fitted :class:`hostcp_core.hostcp.HostCP` (its configuration gives γ, ε, k, the
        embedding kind and the solver; its ``model_`` and ``embedding_`` are the learned state).
    """

    def __init__(self, hostcp: Any):
        self.hostcp = hostcp

    # ------------------------------------------------------------------ fitting
    def fit(self, train: Any, selected: np.ndarray) -> OnlineSelector:
        """Keep the learned state and the selected rows ``train[selected]`` as the old set."""
        if not hasattr(self.hostcp, "model_") or not hasattr(self.hostcp, "embedding_"):
            raise NotFittedError("OnlineSelector needs a fitted HostCP (call its fit first)")
        selected = np.asarray(selected, dtype=np.int64)
        self.model_ = self.hostcp.model_.cpu().eval()
        self.embedding_ = self.hostcp.embedding_.cpu().eval()
        X = torch.as_tensor(train.X, dtype=torch.float32)
        Y = torch.as_tensor(train.y, dtype=torch.long)
        # the scales HOST-CP divides each representation block by (their mean row norm over the
        # training set), so new rows and old points share one scale
        self.scales_ = self.hostcp._represent(self.model_, X, Y)
        self.classes_ = tuple(train.classes)
        self.n_features_ = int(train.n_features)
        self.old_X_ = np.asarray(train.X[selected], dtype=np.float32)
        self.old_y_ = np.asarray(train.y[selected], dtype=np.int64)
        self.old_index_ = selected.copy()  # training-row index; -1 for rows added online
        ids = train.ids
        self.old_ids_ = np.asarray([str(ids[i]) if ids is not None else str(i)
                                    for i in selected], dtype=str)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "old_X_"):
            raise NotFittedError("OnlineSelector is not fitted; call fit() or load()")

    def _check_batch(self, X: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64)
        if X.ndim != 2 or X.shape[1] != self.n_features_:
            raise DataError(f"rows must have {self.n_features_} features; got shape {X.shape}")
        if y.shape != (X.shape[0],):
            raise DataError(f"need one label per row: {X.shape[0]} rows, {y.shape} labels")
        if X.shape[0] < 1:
            raise DataError("the batch is empty")
        if not np.isfinite(X).all():
            raise DataError("features must be finite (no NaN or inf)")
        if ((y < 0) | (y >= len(self.classes_))).any():
            raise DataError("labels must be among the training classes")
        return torch.from_numpy(X), torch.from_numpy(y)

    @property
    def n_selected(self) -> int:
        self._check_fitted()
        return int(len(self.old_y_))

    # ------------------------------------------------------------------ the online step
    def select_batch(self, X: np.ndarray, y: np.ndarray) -> BatchSelection:
        """Which rows of the batch (features X, integer labels y) the online step selects."""
        from hostcp_core.hostcp import _OldSet
        from hostcp_core.selection import SelectionLayer, select_top_k

        self._check_fitted()
        Xb, Yb = self._check_batch(X, y)
        h = self.hostcp
        m, n_old = Xb.shape[0], self.n_selected
        Xall = torch.cat([torch.from_numpy(self.old_X_), Xb])
        Yall = torch.cat([torch.from_numpy(self.old_y_), Yb])
        layer = SelectionLayer(fraction=h.fraction, eps=h.eps, solver=h.solver, normalize=False)
        with torch.no_grad():
            old = _OldSet(n_old, h.embed_dim, torch.device("cpu"))
            if n_old:
                h_old, _ = self.embedding_(h._represent(self.model_, Xall[:n_old],
                                                        Yall[:n_old], self.scales_))
                old.add(torch.arange(n_old), h_old)
            if n_old == 0 and h.fraction * m < 1:
                raise DataError(f"with nothing selected yet a batch needs at least "
                                f"{int(np.ceil(1 / h.fraction))} rows (γ·m ≥ 1)")
            idx = torch.arange(n_old, n_old + m)
            out, old_idx, _ = h._select(self.model_, self.embedding_, layer, Xall, Yall, idx,
                                        old, self.scales_)
        top = select_top_k(out, subset_size(m, h.fraction))
        selected = np.zeros(m, dtype=bool)
        selected[top.numpy()] = True
        # the strongest representative of each row: an old point or a row of the batch
        Z = torch.cat([out.Zo, out.Zn], dim=1)
        best = Z.argmax(dim=1).numpy()
        n_seen = len(old_idx)
        from_old = best < n_seen
        by_old = np.full(m, -1, dtype=np.int64)
        by_old[from_old] = old_idx.numpy()[best[from_old]]
        by_row = np.full(m, -1, dtype=np.int64)
        by_row[~from_old] = best[~from_old] - n_seen
        return BatchSelection(selected=selected, u=out.u.double().numpy(),
                              represented_by_old=by_old, represented_by_row=by_row)

    def add(self, X: np.ndarray, y: np.ndarray, ids: list[str] | None = None) -> OnlineSelector:
        """Grow the selected set with these rows (e.g. the ones ``select_batch`` chose)."""
        self._check_fitted()
        Xb, Yb = self._check_batch(X, y)
        m = Xb.shape[0]
        ids = [str(i) for i in ids] if ids is not None else [
            f"online-{self.n_selected + i}" for i in range(m)]
        if len(ids) != m:
            raise DataError(f"need one id per row: {m} rows, {len(ids)} ids")
        self.old_X_ = np.concatenate([self.old_X_, Xb.numpy()])
        self.old_y_ = np.concatenate([self.old_y_, Yb.numpy()])
        self.old_index_ = np.concatenate([self.old_index_, np.full(m, -1, dtype=np.int64)])
        self.old_ids_ = np.concatenate([self.old_ids_, np.asarray(ids, dtype=str)])
        return self

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the state to ``path`` (.npz, no pickle), atomically."""
        self._check_fitted()
        arrays: dict[str, np.ndarray] = {
            "format_version": np.asarray(FORMAT_VERSION),
            "config": np.asarray(json.dumps(_jsonable_params(self.hostcp.get_params()))),
            "classes": np.asarray(self.classes_, dtype=str),
            "scales": self.scales_.numpy(),
            "old_X": self.old_X_, "old_y": self.old_y_, "old_index": self.old_index_,
            "old_ids": self.old_ids_,
        }
        for prefix, module in (("model", self.model_), ("embedding", self.embedding_)):
            for k, v in module.state_dict().items():
                arrays[f"{prefix}/{k}"] = v.detach().cpu().numpy()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> OnlineSelector:
        """Rebuild a fitted selector from ``save``'s file."""
        from hostcp_core.hostcp import HostCP, _Embedding
        from hostcp_core.models import MLP

        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        if int(arrays["format_version"]) != FORMAT_VERSION:
            raise ValueError(f"unsupported selector file version {arrays['format_version']}")
        params = json.loads(str(arrays["config"]))
        params["hidden"] = tuple(params["hidden"])
        hostcp = HostCP(**params)
        classes = tuple(str(c) for c in arrays["classes"])
        states = {p: {k.split("/", 1)[1]: torch.from_numpy(v) for k, v in arrays.items()
                      if k.startswith(p + "/")} for p in ("model", "embedding")}
        n_features = int(states["model"]["mean"].shape[0])
        model = MLP(n_features, len(classes), hostcp.hidden)
        model.load_state_dict(states["model"])
        d_rep = int(states["embedding"]["map.0.weight"].shape[1])
        embed = _Embedding(d_rep, hostcp.embed_dim, hostcp.embed_width, hostcp.cost_head)
        embed.load_state_dict(states["embedding"])
        self = cls(hostcp)
        self.model_, self.embedding_ = model.eval(), embed.eval()
        self.scales_ = torch.from_numpy(arrays["scales"])
        self.classes_, self.n_features_ = classes, n_features
        self.old_X_ = arrays["old_X"].astype(np.float32)
        self.old_y_ = arrays["old_y"].astype(np.int64)
        self.old_index_ = arrays["old_index"].astype(np.int64)
        self.old_ids_ = arrays["old_ids"].astype(str)
        return self


def _jsonable_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}
