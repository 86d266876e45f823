"""API key format: `vlmq_<id>_<secret>`.

The id is public (it names the key in `vlmq keys list` and finds its row); the secret is
32 random bytes, shown once and stored only as its SHA-256. A salted slow hash would add
nothing: the secret is random, not a password a person chose, so it cannot be guessed
from its hash, and a fast hash keeps the lookup cheap on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX = "vlmq_"
_ID_CHARS = 12
_KEY = re.compile(rf"^{PREFIX}(?P<id>[0-9a-f]{{{_ID_CHARS}}})_(?P<secret>[A-Za-z0-9_-]{{43}})$")
TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}\Z")  # \Z: no newline after it


@dataclass(frozen=True)
class NewKey:
    id: str
    secret_sha256: str
    key: str  # the whole key; only ever shown to the person who created it


def generate() -> NewKey:
    key_id = secrets.token_hex(_ID_CHARS // 2)
    key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return NewKey(id=key_id, secret_sha256=digest(key), key=key)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(presented: str) -> str | None:
    """The id of a well-formed key, or None for anything else."""
    match = _KEY.match(presented)
    return match.group("id") if match else None


def matches(presented: str, secret_sha256: str) -> bool:
    return hmac.compare_digest(digest(presented), secret_sha256)
