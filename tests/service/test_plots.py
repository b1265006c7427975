"""Plots of a finished job: served as PNG/SVG from stored rows; figures' inputs computed right."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from service_helpers import FAST_METHOD, assert_problem, upload, wait_for

from app import plotting
from app.db.models import Job
from app.db.session import session_scope

pytestmark = pytest.mark.timeout(120)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_class_distribution_matches_counts():
    rng = np.random.default_rng(0)
    n = 200
    labels = rng.choice(["a", "b", "c"], size=n, p=[0.6, 0.3, 0.1])
    rank = rng.permutation(n) + 1
    selected = rng.random(n) < 0.25
    points = [{"label": str(labels[i]), "rank": int(rank[i]), "selected": bool(selected[i])}
              for i in range(n)]
    shares = plotting.class_distribution(points, ["a", "b", "c"], top_fraction=0.05)
    top = rank <= 10  # ceil(0.05 * 200)
    for j, c in enumerate(["a", "b", "c"]):
        assert shares["all"][j] == pytest.approx(np.mean(labels == c))
        assert shares["selected"][j] == pytest.approx(np.mean(labels[selected] == c))
        assert shares["top 5%"][j] == pytest.approx(np.mean(labels[top] == c))


def test_flips_found_counts_cumulatively():
    rng = np.random.default_rng(1)
    order = rng.permutation(50)
    flipped = rng.choice(50, size=7, replace=False)
    found = plotting.flips_found(order.tolist(), flipped.tolist())
    assert found == np.cumsum(np.isin(order, flipped)).tolist()
    assert found[-1] == 7


def test_renderers_reflect_their_data():
    curves = [{"curve": "addition", "fraction": f, "n_points": int(100 * f), "value": v}
              for f, v in ((0.25, 0.6), (0.5, 0.7), (1.0, 0.8))]
    a = plotting.render_curves(curves, fmt="png")
    b = plotting.render_curves([{**c, "value": 1 - c["value"]} for c in curves], fmt="png")
    assert _png_size(a) == (640, 400) and a != b
    svg = plotting.render_curves(curves, fmt="svg")
    assert ET.fromstring(svg).tag.endswith("svg")
    assert plotting.render_curves(curves, fmt="svg") == svg  # deterministic bytes
    with pytest.raises(ValueError):
        plotting.render_curves(curves, fmt="gif")


def test_job_plots_served(client, api_key_headers, other_key_headers, csv_pair, settings):
    h = api_key_headers
    train = upload(client, h, csv_pair[0], id_column="row_id")
    test = upload(client, h, csv_pair[1], id_column="row_id")
    r = client.post("/v1/jobs", headers=h, json={
        "train_dataset_id": train["id"], "test_dataset_id": test["id"], "method": FAST_METHOD,
        "fraction": 0.25, "seed": 1})
    job_id = r.json()["id"]
    early = client.get(f"/v1/jobs/{job_id}/plots/curves.png", headers=h)
    if early.status_code != 200:
        assert_problem(early, 409, "job-not-finished")
    assert wait_for(client, h, job_id)["status"] == "succeeded"

    for name in ("curves", "classes", "mislabels"):
        png = client.get(f"/v1/jobs/{job_id}/plots/{name}.png", headers=h)
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert _png_size(png.content)[0] > 100
        svg = client.get(f"/v1/jobs/{job_id}/plots/{name}.svg", headers=h)
        assert svg.headers["content-type"].startswith("image/svg+xml")
        assert ET.fromstring(svg.content).tag.endswith("svg")
    # the curves figure is drawn from the stored rows: its SVG carries the subset's size
    n_sel = client.get(f"/v1/jobs/{job_id}", headers=h).json()["summary"]["n_selected"]
    assert f"selected subset ({n_sel} points)" in client.get(
        f"/v1/jobs/{job_id}/plots/curves.svg", headers=h).text

    assert_problem(client.get(f"/v1/jobs/{job_id}/plots/nope.png", headers=h), 404, "not-found")
    assert_problem(client.get(f"/v1/jobs/{job_id}/plots/curves.gif", headers=h), 404,
                   "not-found")
    assert_problem(client.get(f"/v1/jobs/{job_id}/plots/curves.png", headers=other_key_headers),
                   404, "not-found")
    assert_problem(client.get(f"/v1/jobs/{job_id}/plots/curves.png"), 401, "unauthorized")
    # flips need ground truth: absent here, present once a job records injected flips
    assert_problem(client.get(f"/v1/jobs/{job_id}/plots/flips.png", headers=h), 404,
                   "not-found")
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        job.summary = {**job.summary, "injected_flips": [0, 3, 5]}
    flips = client.get(f"/v1/jobs/{job_id}/plots/flips.svg", headers=h)
    assert flips.status_code == 200 and b"the 3 flipped labels" in flips.content


def test_dashboard_page_served(settings):
    from fastapi.testclient import TestClient

    from app.main import create_app

    client = TestClient(create_app(settings))  # static pages: no lifespan, no runner needed
    page = client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert 'src="/dashboard/app.js"' in page.text
    js = client.get("/dashboard/app.js")
    assert js.headers["content-type"].startswith("text/javascript") and "Bearer" in js.text
    assert client.get("/dashboard/style.css").status_code == 200
