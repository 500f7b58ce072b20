"""Rider passwords: scrypt hashes, a floor on strength, constant-time checks.

Hashing costs about 50 ms of CPU on purpose; callers run it off the event loop
(`asyncio.to_thread`). A password is never logged, stored or returned in clear.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from functools import lru_cache
from pathlib import Path

PASSWORD_CHARS_MIN = 8
PASSWORD_CHARS_MAX = 128
# scrypt cost: N=2^14, r=8, p=1 (16 MiB, ~50 ms here); stored with each hash so it can grow.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32

_COMMON = Path(__file__).with_name("common_passwords.txt")


@lru_cache(maxsize=1)
def _common_passwords() -> frozenset[str]:
    return frozenset(line.strip().lower() for line in _COMMON.read_text().splitlines() if line)


def weakness(password: str) -> str | None:
    """Why a password is refused, or None when it is acceptable."""
    if len(password) < PASSWORD_CHARS_MIN:
        return f"at least {PASSWORD_CHARS_MIN} characters"
    if len(password) > PASSWORD_CHARS_MAX:
        return f"at most {PASSWORD_CHARS_MAX} characters"
    if password.lower() in _common_passwords() or len(set(password)) < 4:
        return "too common"
    return None


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, dklen=HASH_BYTES, maxmem=64 * 1024 * 1024
    )


def hash_password(password: str) -> str:
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    encode = base64.b64encode
    return (
        f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encode(salt).decode()}${encode(digest).decode()}"
    )


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


# A real hash of a random password: checked when the phone is unknown, so that a wrong phone
# costs the same time as a wrong password and answers cannot be told apart by timing.
DUMMY_HASH = hash_password(base64.b64encode(os.urandom(12)).decode())
