"""The execution transports: the embedded runner (``worker.runner``) and Celery
(``worker.celery_app``, ``worker.tasks``). Each takes a job id and calls
``app.jobs.run_job.run_job``; the job's logic lives in ``app.jobs``."""
