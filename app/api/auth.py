"""API-key authentication with a short per-process cache.

Every /v1 request authenticates, so the key lookup is the hottest query of the service. A key
found in the table is kept here for ``HOSTCP_AUTH_CACHE_S`` seconds (by its public prefix, with
its stored hash), so a burst of polls costs one query per key and process, not one per request.
The token is still hashed and compared in constant time on every request; only the row lookup
is skipped. The price: a key revoked in the table stays usable for up to that many seconds in
each API process. Unknown prefixes are never cached (a caller cannot fill the cache).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from app.db import repo
from app.db.session import transaction


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: the API key's id (owner of datasets and jobs) and name."""

    id: int
    name: str


@dataclass(frozen=True, slots=True)
class _Entry:
    principal: Principal
    key_hash: str
    expires: float


class KeyCache:
    """prefix -> (principal, stored hash), each entry valid for ``ttl_s`` seconds. Used from the
    event loop's thread only (no lock); bounded: cleared when it reaches ``max_entries``."""

    def __init__(self, ttl_s: float, max_entries: int = 4096) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, _Entry] = {}

    def get(self, prefix: str) -> _Entry | None:
        entry = self._entries.get(prefix)
        if entry is None:
            return None
        if entry.expires <= time.monotonic():
            del self._entries[prefix]
            return None
        return entry

    def put(self, prefix: str, principal: Principal, key_hash: str) -> None:
        if self.ttl_s <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[prefix] = _Entry(principal, key_hash, time.monotonic() + self.ttl_s)


def load_key(sessions: sessionmaker[Session], token: str) -> tuple[Principal, str] | None:
    """The principal and stored hash of a valid, unrevoked key (one query); blocking."""
    with transaction(sessions()) as session:
        key = repo.authenticate(session, token=token)
        return None if key is None else (Principal(key.id, key.name), key.key_hash)


def local_principal(sessions: sessionmaker[Session]) -> Principal:
    """The single owner used when auth is explicitly disabled (embedded mode only)."""
    with transaction(sessions()) as session:
        key = repo.local_principal(session)
        return Principal(key.id, key.name)
