"""The HTTP layer: routers, dependencies, error handlers and middleware."""
