"""Progress events that long-running valuers report through a callback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """One progress event. ``step`` of ``total`` units of ``stage`` are done."""

    stage: str
    step: int
    total: int | None = None
    epoch: int | None = None
    batch: int | None = None
    loss: float | None = None
    message: str = ""

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.step / self.total)


ProgressCallback = Callable[[Progress], None]
"""A callback may raise :class:`hostcp_core.Cancelled` to stop the work between steps."""


def report(callback: ProgressCallback | None, stage: str, step: int, total: int | None = None,
           **kw) -> None:
    if callback is not None:
        callback(Progress(stage=stage, step=step, total=total, **kw))
