"""Exceptions raised by hostcp_core."""


class DataError(ValueError):
    """Input data are unusable; the message names the problem (and the file, when there is one)."""


class Cancelled(Exception):
    """Raised from a progress callback to stop a running valuation between batches."""


class NotFittedError(RuntimeError):
    """A result was asked of an estimator that has not been fitted."""
