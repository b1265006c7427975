"""hostcp service: the HTTP API (FastAPI), its database layer and settings.

Never imports torch at module level; valuation runs in the worker (``worker/``).
"""
