"""Job orchestration: ``run_job(job_id)`` and its two transports (in-process runner, Celery)."""
