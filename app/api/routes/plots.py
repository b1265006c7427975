"""/v1/jobs/{id}/plots/{name}.png|svg: figures of a finished job, drawn from its stored rows."""

from __future__ import annotations

import math

from fastapi import APIRouter
from fastapi.responses import Response

from app import plotting
from app.api.deps import PrincipalDep, SessionDep
from app.api.routes.results import _finished_job
from app.core import problems
from app.core.problems import Problem
from app.db import repo
from app.db.models import DatasetRecord, Job
from app.jobs.methods import COMPARE

router = APIRouter(prefix="/v1/jobs", tags=["plots"])

PLOTS = {
    "curves": "held-out accuracy of the top fraction by value, a random fraction, the subset "
              "(comparison jobs: addition and removal curves, one line per method)",
    "classes": "class shares in the training set, the selected subset and the top 5 % by value "
               "(comparison jobs: the training set and each method's top 5 %)",
    "mislabels": "mislabel score in rank order, suspects highlighted",
    "confusion": "the mislabel report's given label vs estimated true class (expected counts)",
    "flips": "flipped labels found vs points inspected (jobs that record injected flips; "
             "comparison jobs: one line per method, lowest value first)",
}


def _injected_flips(job: Job) -> list[int]:
    # ground truth exists only where flips were injected on purpose (comparison jobs)
    flipped = (job.summary or {}).get("injected_flips")
    if not isinstance(flipped, list):
        raise Problem(problems.NOT_FOUND, f"job {job.id} has no injected label flips to score "
                      "against; the flips plot needs them")
    return flipped


def _comparison_plot(session, job: Job, name: str, ext: str, title: str) -> bytes:
    """A comparison job's figures: one line (or bar group) per compared method."""
    methods = list(job.methods or [])
    if name == "curves":
        rows = [{"curve": c.curve, "fraction": c.fraction, "value": c.value}
                for c in repo.list_curves(session, job_id=job.id, after=None, limit=None)]
        return plotting.render_comparison_curves(rows, methods, fmt=ext,
                                                 title=f"Method comparison · {title}")
    if name == "classes":
        comp = (job.summary or {}).get("comparison") or {}
        top = f"top {comp.get('top_fraction', plotting.TOP_FRACTION):.0%}"
        shares = {"training set": comp.get("train_class_fractions", [])}
        shares.update({f"{r['method']} {top}": r["top_classes"]["fractions"]
                       for r in comp.get("methods", [])})
        colors = {"training set": "C7"}
        colors.update({f"{m} {top}": c for m, c in plotting.method_colors(methods).items()})
        return plotting.render_class_shares(shares, comp.get("classes", []), fmt=ext,
                                            colors=colors,
                                            title=f"Class distribution · {title}")
    flipped = _injected_flips(job)
    orders = {}
    for method in methods:  # most suspect first: lowest value (highest rank number) first
        rows = repo.list_method_points(session, job_id=job.id, method=method, after=None,
                                       limit=None)
        orders[method] = [r.point_index for r in sorted(rows, key=lambda r: -r.rank)]
    return plotting.render_flips_by_method(orders, flipped, fmt=ext,
                                           title=f"Flips found · {title}")


def _split(filename: str) -> tuple[str, str]:
    name, _, ext = filename.rpartition(".")
    if name not in PLOTS or ext not in plotting.FORMATS:
        raise Problem(problems.NOT_FOUND, f"no plot {filename!r}; plots are "
                      f"{', '.join(PLOTS)} as .{' or .'.join(plotting.FORMATS)}")
    return name, ext


@router.get("/{job_id}/plots/{filename}", response_class=Response,
            responses={200: {"content": {"image/png": {}, "image/svg+xml": {}}}})
def get_plot(job_id: str, filename: str, session: SessionDep, principal: PrincipalDep):
    """A figure of a finished job: ``curves``, ``classes``, ``mislabels`` or ``flips``, as
    ``.png`` or ``.svg``."""
    name, ext = _split(filename)
    job = _finished_job(session, principal.id, job_id)
    title = f"{job.method} · job {job.id[:8]}"
    if job.method == COMPARE and name not in ("mislabels", "confusion"):  # mislabels: the
        body = _comparison_plot(session, job, name, ext, title)       # first method's
    elif name == "confusion":
        confusion = ((job.summary or {}).get("mislabels") or {}).get("confusion")
        if confusion is None:
            raise Problem(problems.NOT_FOUND, f"job {job.id} has no confusion estimate (its "
                          "mislabel report predates it)")
        body = plotting.render_confusion(confusion, fmt=ext, title=f"Confusion · {title}")
    elif name == "curves":
        rows = [{"curve": c.curve, "fraction": c.fraction, "n_points": c.n_points,
                 "value": c.value} for c in repo.list_curves(session, job_id=job.id, after=None,
                                                             limit=None)]
        body = plotting.render_curves(rows, fmt=ext, title=f"Accuracy curves · {title}")
    elif name == "classes":  # aggregated in the database: bounded whatever the job's size
        classes = session.get(DatasetRecord, job.train_dataset_id).classes
        n = (job.summary or {}).get("n_train") or 0
        counts = repo.class_counts(session, job_id=job.id,
                                   top_k=max(1, math.ceil(plotting.TOP_FRACTION * n)))
        shares = {}
        for group, label in (("all", "all"), ("selected", "selected"),
                             ("top", f"top {plotting.TOP_FRACTION:.0%}")):
            total = sum(counts[group].values())
            shares[label] = [counts[group].get(c, 0) / total if total else 0.0 for c in classes]
        body = plotting.render_class_shares(shares, classes, fmt=ext,
                                            title=f"Class distribution · {title}")
    elif name == "mislabels":  # an even sample of the ranks: bounded whatever the job's size
        profile, n_suspected = repo.mislabel_profile(session, job_id=job.id)
        rows = [{"rank": r, "score": s, "suspected": sus} for r, s, sus in profile]
        body = plotting.render_mislabels(rows, fmt=ext, title=f"Mislabels · {title}",
                                         n_suspected=n_suspected)
    else:
        ranked = repo.point_indices_by_mislabel_rank(session, job_id=job.id)
        body = plotting.render_flips(ranked, _injected_flips(job), fmt=ext,
                                     title=f"Flips found · {title}")
    return Response(body, media_type=plotting.FORMATS[ext],
                    headers={"Cache-Control": "private, max-age=3600",
                             "Content-Disposition": f'inline; filename="{job.id}-{name}.{ext}"'})
