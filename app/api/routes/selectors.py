"""/v1/selectors/{job_id}: the online selector a finished HOST-CP job keeps.

``POST .../select`` runs HOST-CP's online facility-location step on one new minibatch against
the job's selected set so far, and (with ``add``) grows that set with the rows it chose.
"""

from __future__ import annotations

import contextlib
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import PrincipalDep, SessionDep, SettingsDep
from app.api.routes.results import _finished_job
from app.core import problems
from app.core.config import Settings
from app.core.problems import Problem
from app.jobs.online_state import load_selector, selector_lock, selector_path

router = APIRouter(prefix="/v1/selectors", tags=["selectors"])

MAX_ROWS = 1000  # one request is one minibatch D_t; the layer is quadratic in its size


class SelectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    features: Annotated[list[list[float]], Field(min_length=1, max_length=MAX_ROWS,
                                                 description="one row of features per point")]
    labels: list[str] = Field(description="one label per row, among the training classes")
    ids: list[str] | None = Field(None, description="optional row ids (kept when added)")
    add: bool = Field(False, description="add the selected rows to the job's selected set")


class SelectedRow(BaseModel):
    row: int
    id: str | None = None
    selected: bool
    u: float = Field(description="how open the row is as a facility, 0-1 (the layer's "
                                 "relaxed selection)")
    represented_by_id: str | None = Field(None, description="id of the selected-set point "
                                          "that represents this row most, if one does")
    represented_by_row: int | None = Field(None, description="the batch row that represents "
                                           "this row most, if one does")


class SelectResponse(BaseModel):
    job_id: str
    n_rows: int
    n_selected: int
    added: int
    selected_set_size: int
    items: list[SelectedRow]


class SelectorPublic(BaseModel):
    job_id: str
    fraction: float
    classes: list[str]
    n_features: int
    selected_set_size: int
    added_online: int


def _selector(settings: Settings, job_id: str):
    selector = load_selector(settings, job_id)
    if selector is None:
        raise Problem(problems.NO_SELECTOR, f"job {job_id} keeps no online selector (only "
                      "HOST-CP jobs do)")
    return selector


def _codes(selector, labels: list[str]):
    import numpy as np

    index = {c: k for k, c in enumerate(selector.classes_)}
    unknown = sorted({lab for lab in labels if lab not in index})
    if unknown:
        raise Problem(problems.INVALID_DATA, f"labels not among the training classes "
                      f"{list(selector.classes_)}: {unknown[:5]}")
    return np.asarray([index[lab] for lab in labels], dtype=np.int64)


def _run(settings: Settings, job_id: str, body: SelectRequest) -> SelectResponse:
    import numpy as np

    from hostcp_core import DataError

    m = len(body.features)
    if len(body.labels) != m or (body.ids is not None and len(body.ids) != m):
        raise Problem(problems.INVALID_DATA, f"{m} rows need {m} labels (and ids, if given)")
    width = {len(r) for r in body.features}
    if len(width) != 1:
        raise Problem(problems.INVALID_DATA, "every row needs the same number of features")
    X = np.asarray(body.features, dtype=np.float32)
    try:
        # an add must see and keep every earlier add; plain reads need no lock (the file is
        # replaced atomically)
        with selector_lock(settings, job_id) if body.add else contextlib.nullcontext():
            selector = _selector(settings, job_id)
            y = _codes(selector, body.labels)
            out = selector.select_batch(X, y)
            old_ids = selector.old_ids_
            added = 0
            if body.add and out.selected.any():
                chosen = np.flatnonzero(out.selected)
                ids = None if body.ids is None else [body.ids[i] for i in chosen]
                selector.add(X[chosen], y[chosen], ids)
                selector.save(selector_path(settings, job_id))
                added = len(chosen)
    except DataError as exc:
        raise Problem(problems.INVALID_DATA, str(exc)) from None
    items = []
    for i in range(m):
        old, row = int(out.represented_by_old[i]), int(out.represented_by_row[i])
        items.append(SelectedRow(
            row=i, id=None if body.ids is None else body.ids[i], selected=bool(out.selected[i]),
            u=float(out.u[i]), represented_by_id=str(old_ids[old]) if old >= 0 else None,
            represented_by_row=row if row >= 0 else None))
    return SelectResponse(job_id=job_id, n_rows=m, n_selected=int(out.selected.sum()),
                          added=added, selected_set_size=selector.n_selected, items=items)


@router.post("/{job_id}/select", response_model=SelectResponse)
def select(job_id: str, body: SelectRequest, session: SessionDep, settings: SettingsDep,
                 principal: PrincipalDep) -> SelectResponse:
    """Which rows of a new batch HOST-CP's online step selects, given the job's selected set
    so far (the rows of the set nearest to the batch are its old set); ``add`` keeps them."""
    job = _finished_job(session, principal.id, job_id)
    return _run(settings, job.id, body)


@router.get("/{job_id}", response_model=SelectorPublic)
def get_selector(job_id: str, session: SessionDep, settings: SettingsDep,
                 principal: PrincipalDep) -> SelectorPublic:
    """The job's online selector: its classes, feature count and selected set size."""
    job = _finished_job(session, principal.id, job_id)
    selector = _selector(settings, job.id)
    return SelectorPublic(job_id=job.id, fraction=selector.hostcp.fraction,
                          classes=list(selector.classes_), n_features=selector.n_features_,
                          selected_set_size=selector.n_selected,
                          added_online=int((selector.old_index_ < 0).sum()))
