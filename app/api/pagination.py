"""Opaque, signed page tokens for keyset pagination (no totals, no offsets)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from app.core import problems
from app.core.problems import Problem


def encode_token(secret: str, scope: str, key: Any) -> str:
    payload = json.dumps({"s": scope, "k": key}, separators=(",", ":")).encode()
    sig = hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(sig + payload).decode().rstrip("=")


def decode_token(secret: str, scope: str, token: str) -> Any:
    """The key stored in ``token``; the token must be ours and for this very listing."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        sig, payload = raw[:16], raw[16:]
        good = hmac.compare_digest(sig, hmac.new(secret.encode(), payload,
                                                 hashlib.sha256).digest()[:16])
        data = json.loads(payload) if good else None
    except (ValueError, TypeError):
        data = None
    if not data or data.get("s") != scope:
        raise Problem(problems.INVALID_PAGE_TOKEN, "page_token was not issued for this listing")
    return data["k"]


def clamp_page_size(page_size: int | None, default: int, maximum: int) -> int:
    if page_size is None:
        return default
    return max(1, min(int(page_size), maximum))  # coerced, not refused (Azure guidelines)
