"""Dependencies: settings, one session per request, the authenticated principal.

They are ``async`` on purpose: FastAPI runs every sync dependency in the thread pool, and the
thread hops (five per request before) cost more CPU than the queries. What does no I/O runs on
the event loop; what does (the commit at the end of a request, a key lookup that misses the
cache) still goes to the thread pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from app.api.auth import KeyCache, Principal, load_key, local_principal
from app.core import problems
from app.core.config import Settings
from app.core.problems import Problem
from app.db import repo
from app.db.session import transaction


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_db(request: Request) -> AsyncIterator[Session]:
    """One session per request, committed when the handler returns (rolled back if it raises).

    Opening the session does no I/O (it connects on first use); the commit does, so it runs in
    the thread pool, and is skipped for a request that never touched the database."""
    session = request.app.state.sessionmaker()
    scope = transaction(session)
    scope.__enter__()
    try:
        yield session
    except BaseException as exc:
        with anyio.CancelScope(shield=True):  # a cancelled request still rolls back and closes
            await run_in_threadpool(scope.__exit__, type(exc), exc, exc.__traceback__)
        raise
    if session.in_transaction():
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(scope.__exit__, None, None, None)
    else:
        scope.__exit__(None, None, None)


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_db)]

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="hostcp"'}


def _key_cache(request: Request, settings: Settings) -> KeyCache:
    cache = getattr(request.app.state, "key_cache", None)
    if cache is None:  # one per app (and so per process); only the event loop touches it
        cache = request.app.state.key_cache = KeyCache(settings.auth_cache_s)
    return cache


async def get_principal(request: Request, settings: SettingsDep) -> Principal:
    state = request.app.state
    if settings.auth == "disabled":
        local = getattr(state, "local_principal", None)
        if local is None:
            local = state.local_principal = await run_in_threadpool(local_principal,
                                                                    state.sessionmaker)
        return local
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Problem(problems.UNAUTHORIZED, "send an API key as 'Authorization: Bearer <key>' "
                      "(create one with `hostcp keys create`)", headers=_CHALLENGE)
    prefix = repo.key_prefix(token)
    cache = _key_cache(request, settings)
    entry = cache.get(prefix) if prefix is not None else None
    if entry is not None:  # a known key: the token is still hashed and compared
        if repo.token_matches(entry.key_hash, token):
            return entry.principal
        found = None
    else:
        found = await run_in_threadpool(load_key, state.sessionmaker, token)
    if found is None:
        raise Problem(problems.UNAUTHORIZED, "the API key is not valid", headers=_CHALLENGE)
    cache.put(prefix, *found)
    return found[0]


PrincipalDep = Annotated[Principal, Depends(get_principal)]
