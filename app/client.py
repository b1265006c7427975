"""A Python client for the hostcp service (httpx): upload, submit, wait, download as frames.

    from app.client import HostcpClient
    with HostcpClient("http://127.0.0.1:8000", api_key="hcp_...") as c:
        train = c.upload_dataset("train.csv")
        test = c.upload_dataset("test.csv")
        job = c.submit_job(train["id"], test["id"], method="knn_shapley", fraction=0.2)
        job = c.wait(job["id"])
        values = c.results(job["id"], "values")      # a pandas DataFrame
"""

from __future__ import annotations

import io
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

TERMINAL = ("succeeded", "failed", "canceled", "timed_out")
RESULT_KINDS = ("subset", "values", "mislabels", "curves")


class ApiError(Exception):
    """An error answer; ``problem`` is its RFC 9457 body."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        super().__init__(f"{status} {problem.get('title', '')}: {problem.get('detail', '')}")


class JobFailed(Exception):
    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        err = job.get("error") or {}
        super().__init__(f"job {job['id']} {job['status']}: {err.get('detail', '')}")


class HostcpClient:
    def __init__(self, base_url: str | None = None, *, api_key: str | None = None,
                 timeout: float = 60.0, transport: httpx.BaseTransport | None = None) -> None:
        base_url = base_url or os.environ.get("HOSTCP_URL", "http://127.0.0.1:8000")
        api_key = api_key if api_key is not None else os.environ.get("HOSTCP_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout,
                                  transport=transport)

    def __enter__(self) -> HostcpClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, url: str, **kw) -> httpx.Response:
        r = self._http.request(method, url, **kw)
        if r.status_code >= 400:
            try:
                problem = r.json()
            except ValueError:
                problem = {"title": r.reason_phrase, "detail": r.text[:500]}
            raise ApiError(r.status_code, problem)
        return r

    # --- datasets ---
    def upload_dataset(self, path: str | os.PathLike, *, label_column: str | None = None,
                       id_column: str | None = None, format: str | None = None) -> dict:
        path = Path(path)
        form = {k: v for k, v in (("label_column", label_column), ("id_column", id_column),
                                  ("format", format)) if v is not None}
        with open(path, "rb") as fh:
            return self._request("POST", "/v1/datasets", files={"file": (path.name, fh)},
                                 data=form, headers={"Idempotency-Key": str(uuid.uuid4())}
                                 ).json()

    def get_dataset(self, dataset_id: str) -> dict:
        return self._request("GET", f"/v1/datasets/{dataset_id}").json()

    def list_datasets(self) -> list[dict]:
        return list(self._pages("/v1/datasets"))

    # --- jobs ---
    def submit_job(self, train_dataset_id: str, test_dataset_id: str, *,
                   method: str | None = None,
                   fraction: float = 0.2, seed: int = 0, params: dict | None = None,
                   methods: list[str] | None = None, inject_flips: float | None = None,
                   evaluation: str | None = None, flag_precision: float | None = None,
                   idempotency_key: str | None = None) -> dict:
        """Queue a job. ``methods`` (with ``method="compare"``, the default when given) runs
        several methods on the same splits; ``inject_flips`` flips that share of the training
        labels first (comparison jobs). ``evaluation``: "quick" (the service's default),
        "full" or "none"; ``flag_precision``: the mislabel report's precision target."""
        if method is None:  # the service's default, or a comparison when methods are given
            method = "compare" if methods is not None else "recommended"
        body = {"train_dataset_id": train_dataset_id, "test_dataset_id": test_dataset_id,
                "method": method, "fraction": fraction, "seed": seed, "params": params or {}}
        if methods is not None:
            body["methods"] = list(methods)
        if inject_flips is not None:
            body["inject_flips"] = inject_flips
        if evaluation is not None:
            body["evaluation"] = evaluation
        if flag_precision is not None:
            body["flag_precision"] = flag_precision
        # a retried submit (e.g. after a timeout) must not start a second job
        key = idempotency_key or str(uuid.uuid4())
        return self._request("POST", "/v1/jobs", json=body,
                             headers={"Idempotency-Key": key}).json()

    def get_job(self, job_id: str) -> dict:
        return self._request("GET", f"/v1/jobs/{job_id}").json()

    def list_jobs(self, status: str | None = None) -> list[dict]:
        return list(self._pages("/v1/jobs", status=status))

    def cancel_job(self, job_id: str) -> dict:
        return self._request("POST", f"/v1/jobs/{job_id}/cancel").json()

    def methods(self) -> list[str]:
        return self._request("GET", "/v1/methods").json()["methods"]

    def wait(self, job_id: str, *, timeout: float | None = None, poll_s: float = 1.0,
             progress: bool = False, raise_on_failure: bool = True) -> dict:
        """Poll until the job ends; ``progress=True`` draws a progress bar on stderr."""
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=100, desc=job_id[:8], unit="%", file=sys.stderr)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                job = self.get_job(job_id)
                if bar is not None:
                    bar.n = round(100 * job["progress"])
                    bar.set_postfix_str(f"{job['status']} {job.get('stage') or ''}")
                    bar.refresh()
                if job["status"] in TERMINAL:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s")
                time.sleep(poll_s)
        finally:
            if bar is not None:
                bar.close()
        if raise_on_failure and job["status"] != "succeeded":
            raise JobFailed(job)
        return job

    # --- results ---
    def download(self, job_id: str, kind: str, *, format: str = "csv") -> bytes:
        if kind not in RESULT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(RESULT_KINDS)}")
        return self._request("GET", f"/v1/jobs/{job_id}/{kind}",
                             params={"format": format}).content

    def results(self, job_id: str, kind: str):
        """One result table as a pandas DataFrame (fetched as Parquet)."""
        import pandas as pd

        return pd.read_parquet(io.BytesIO(self.download(job_id, kind, format="parquet")))

    def _pages(self, url: str, **params):
        params = {k: v for k, v in params.items() if v is not None}
        token = None
        while True:
            page = self._request("GET", url, params={**params, "page_size": 1000,
                                                     **({"page_token": token} if token else {})}
                                 ).json()
            yield from page["items"]
            token = page.get("next_page_token")
            if not token:
                return
