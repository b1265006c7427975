"""Exceptions raised by hostcp_core."""


class DataError(ValueError):
    """Input data are unusable; the message names the problem (and the file, when there is one)."""


class Cancelled(Exception):
    """Raised from a progress callback to stop a running valuation between batches."""


class NotFittedError(RuntimeError):
    """A result was asked of an estimator that has not been fitted."""


class ValuationFailed(RuntimeError):
    """A valuer ran but produced no usable values (e.g. DVRL's estimator collapsed to a constant
    on every restart); the message says what happened and what to change."""
