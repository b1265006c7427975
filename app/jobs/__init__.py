"""The job domain: what a job may ask for (``methods``), how it is handed to whatever runs it
(``dispatch``, an interface the composition roots install a transport into), and its stages
(``run_job``, ``comparison``, ``shapley_chunks``) with their progress, data and online-selector
state. Free of HTTP and of Celery: the API (``app.api``) and the transports (``worker``) both
stand on it.

hostcp_core's heavy modules (torch, scikit-learn) are imported inside the stage functions: the
API process imports this package to validate jobs and must start without them.
"""
