"""/v1/methods: the method catalogue (what each method is for, its parameters, GPU use, cost
and the largest training set a job of it accepts)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import PrincipalDep
from app.api.schemas import MethodsList
from hostcp_core import available_methods
from hostcp_core.catalogue import catalogue

router = APIRouter(prefix="/v1/methods", tags=["methods"])


@router.get("", response_model=MethodsList)
def list_methods(_principal: PrincipalDep) -> MethodsList:
    available = available_methods()
    return MethodsList(methods=available,
                       catalogue=[m for m in catalogue() if m["name"] in available])
