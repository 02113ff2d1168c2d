"""Passwords (scrypt, salted, constant-time comparison), CSRF tokens, and the session secret."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

_N, _R, _P = 2**14, 8, 1
# Verifying against this when the user does not exist costs the same time as a real check, so
# the answer's timing does not reveal which usernames exist.
_DUMMY_HASH = None


def hash_password(password: str) -> str:
    if len(password) < 8:
        raise ValueError("a password needs at least 8 characters")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str | None) -> bool:
    global _DUMMY_HASH
    if stored is None:
        _DUMMY_HASH = _DUMMY_HASH or hash_password(secrets.token_hex(16))
        stored, known = _DUMMY_HASH, False
    else:
        known = True
    try:
        _, n, r, p, salt, digest = stored.split("$")
        candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p))
    except ValueError:
        return False
    return hmac.compare_digest(candidate.hex(), digest) and known


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_matches(session_token: str | None, sent: str | None) -> bool:
    return bool(session_token) and bool(sent) and hmac.compare_digest(session_token, sent)


def session_secret(folder: Path) -> str:
    """``IDGLOW_REVIEW_SECRET``, or a random secret kept (mode 600) beside the database, so
    sessions survive a restart of the server."""
    if os.environ.get("IDGLOW_REVIEW_SECRET"):
        return os.environ["IDGLOW_REVIEW_SECRET"]
    path = folder / "session_secret"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip()
