"""The embedded runner's loop outlives an exception from run_job (e.g. the database went away
between the job's last write attempts): it logs, waits a poll interval and carries on, instead
of dying with the job left running and nobody to reap it."""

from __future__ import annotations

from app.db import repo
from app.db.migrate import upgrade
from worker import runner as run_job_module
from worker.runner import serve_forever


def test_runner_loop_survives_run_job_errors(settings, monkeypatch):
    upgrade(settings)
    calls: list[str] = []

    def flaky(job_id, **kw):
        calls.append(job_id)
        if len(calls) == 1:
            raise RuntimeError("database went away")
        return "succeeded"

    monkeypatch.setattr(repo, "runnable_job_ids", lambda s, **kw: ["job-1"])
    monkeypatch.setattr(run_job_module, "run_job", flaky)
    waits: list[float] = []
    serve_forever(settings, wake_wait=waits.append, clear=lambda: None,
                  stopping=lambda: len(calls) >= 2)
    assert calls == ["job-1", "job-1"]  # it tried again after the error
    assert waits == [settings.runner_poll_s]  # and paused once before doing so
