"""Dependencies: settings, one session per request, the authenticated principal."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.core import problems
from app.core.config import Settings
from app.core.problems import Problem
from app.db import repo
from app.db.models import ApiKey
from app.db.session import transaction


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    """One session per request, committed when the handler returns."""
    with transaction(request.app.state.sessionmaker()) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_db)]


def get_principal(request: Request, session: SessionDep, settings: SettingsDep) -> ApiKey:
    if settings.auth == "disabled":
        return repo.local_principal(session)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="hostcp"'}
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(problems.UNAUTHORIZED, "send an API key as 'Authorization: Bearer <key>' "
                      "(create one with `hostcp keys create`)", headers=challenge)
    key = repo.authenticate(session, token=token.strip())
    if key is None:
        raise Problem(problems.UNAUTHORIZED, "the API key is not valid", headers=challenge)
    return key


PrincipalDep = Annotated[ApiKey, Depends(get_principal)]
