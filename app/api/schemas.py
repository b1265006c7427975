"""Request and response bodies (``XCreate`` / ``XPublic`` / ``XsPage``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.jobs.methods import COMPARE, MAX_COMPARED


class DatasetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    format: str
    sha256: str
    size_bytes: int
    n_rows: int
    n_features: int
    classes: list[str]
    class_counts: list[int]
    label_column: str | None = None
    id_column: str | None = None
    feature_names: list[str] | None = None
    created_at: datetime


class DatasetsPage(BaseModel):
    items: list[DatasetPublic]
    next_page_token: str | None = None


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    train_dataset_id: str
    test_dataset_id: str
    method: str = Field("recommended", description='a method name (see GET /v1/methods; '
                        'the default, "recommended", scores candidate subsets on part of the '
                        'test set and returns the best), or "compare" to run every method in '
                        '`methods` on the same data')
    fraction: float = Field(0.2, gt=0, le=1, description="size of the subset, as a fraction "
                            "of the training set, in (0, 1]")
    seed: int = Field(0, ge=0)
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="method parameters (e.g. epochs, device); for "
                                   '"compare", an object per method name')
    methods: list[str] | None = Field(None, min_length=2, max_length=MAX_COMPARED,
                                      description='"compare" only: the methods to compare, '
                                      f"2 to {MAX_COMPARED}, each once; the first is the "
                                      "default for subset, values and mislabels")
    inject_flips: float | None = Field(None, ge=0, le=0.5, description='"compare" only: '
                                       "share of training labels the job flips (seeded) "
                                       "before valuing, to score flip detection; 0 or absent: "
                                       "none")
    # None (absent) means the default; absent fields keep stored Idempotency-Key fingerprints
    evaluation: Literal["quick", "full", "none"] | None = Field(
        None, description='how the subset is evaluated after valuation: "quick" (default: '
        "learners fitted on a capped, stated sample per fraction, bounded cost at any size), "
        '"full" (every fit on all its points; cost grows with the data) or "none"')
    flag_precision: float | None = Field(
        None, gt=0, lt=1, description="the mislabel report flags the largest set of points "
        "whose expected precision (mean probability that the given label is wrong) reaches "
        "this; absent: the report's default rule")

    @model_validator(mode="after")
    def _comparison_fields(self) -> JobCreate:
        if self.method != COMPARE:
            if self.methods is not None or self.inject_flips is not None:
                raise ValueError(f'methods and inject_flips belong to method "{COMPARE}" only')
            return self
        if self.methods is None:
            raise ValueError(f'method "{COMPARE}" needs methods: the methods to compare')
        twice = sorted({m for m in self.methods if self.methods.count(m) > 1})
        if twice:
            raise ValueError(f"methods must each appear once: {', '.join(twice)} repeated")
        stray = sorted(set(self.params) - set(self.methods))
        if stray:
            raise ValueError(f'params of a "{COMPARE}" job are keyed by compared method; '
                             f"not compared: {', '.join(stray)}")
        if self.inject_flips == 0:
            self.inject_flips = None  # flipping nothing is no injection
        return self


class JobPublic(BaseModel):
    """The status monitor of a long-running operation."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled", "timed_out"]
    stage: str | None = None
    progress: float
    message: str | None = None
    method: str
    params: dict[str, Any]
    fraction: float
    seed: int
    methods: list[str] | None = None
    inject_flips: float | None = None
    evaluation: str | None = None
    flag_precision: float | None = None
    expected_label_errors: float | None = None
    train_dataset_id: str
    test_dataset_id: str
    queue: str
    attempts: int
    max_attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    timings: dict[str, float] | None = None
    summary: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    links: dict[str, str] = Field(default_factory=dict)


class JobsPage(BaseModel):
    items: list[JobPublic]
    next_page_token: str | None = None


class PointValue(BaseModel):
    index: int
    id: str | None = None
    score: float | None
    rank: int
    selected: bool
    label: str


class SubsetPoint(BaseModel):
    index: int
    id: str | None = None
    score: float | None
    rank: int
    label: str


class MislabelRow(BaseModel):
    index: int
    id: str | None = None
    given_label: str
    suggested_label: str | None
    suggested_prob: float | None = None
    label_error_prob: float | None = None
    score: float | None
    rank: int | None
    suspected: bool


class CurveRow(BaseModel):
    curve: str
    step: int
    fraction: float
    n_points: int
    value: float | None


class ValuesPage(BaseModel):
    items: list[PointValue]
    next_page_token: str | None = None


class SubsetPage(BaseModel):
    items: list[SubsetPoint]
    next_page_token: str | None = None


class MislabelsPage(BaseModel):
    items: list[MislabelRow]
    next_page_token: str | None = None


class CurvesPage(BaseModel):
    items: list[CurveRow]
    next_page_token: str | None = None


class MethodParameter(BaseModel):
    name: str
    type: str | None = None
    default: Any = None
    required: bool = False
    doc: str | None = None


class MethodInfo(BaseModel):
    """One method's catalogue entry (``hostcp_core.catalogue``)."""

    name: str
    purpose: str
    summary: str
    gpu: bool
    max_train: int | None = Field(None, description="the largest training set a job of this "
                                  "method accepts (None: no limit); larger ones get 422")
    cost: dict[str, Any]
    parameters: list[MethodParameter]


class MethodsList(BaseModel):
    methods: list[str]
    catalogue: list[MethodInfo] = Field(default_factory=list)
