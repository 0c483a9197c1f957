"""Secrets of the server: password hashing (Argon2) and bearer tokens (random, stored as SHA-256)."""

from __future__ import annotations

import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

# OWASP's Argon2id baseline (19 MiB, 2 passes): argon2-cffi's default takes
# 64 MiB per hash, which would dominate a server's peak memory at every login.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)

API_PREFIX = "bkup_u_"
AGENT_PREFIX = "bkup_a_"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def new_token(kind: str) -> str:
    """A fresh token; the prefix tells a human (and a log scrubber) what it is."""
    return (AGENT_PREFIX if kind == "agent" else API_PREFIX) + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # Tokens carry 256 bits of entropy: a fast hash is enough and makes lookup an index hit.
    return hashlib.sha256(token.encode()).hexdigest()


def new_password() -> str:
    return secrets.token_urlsafe(18)
