"""Settings and other cross-cutting pieces shared by the API, the worker and the CLI."""
