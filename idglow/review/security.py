"""Passwords (scrypt, salted, constant-time comparison), CSRF tokens, file tokens, the session
secret, and the limits on failed sign-ins."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
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
    """Slow on purpose (scrypt): call it off the event loop."""
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


def same_token(expected: object, sent: object) -> bool:
    """Constant-time equality of two non-empty text tokens. Anything else (a file upload, a
    number from a forged cookie) is simply unequal: hmac.compare_digest raises TypeError on
    non-ASCII str, so both sides are compared as UTF-8 bytes."""
    if not isinstance(expected, str) or not isinstance(sent, str) or not expected or not sent:
        return False
    return hmac.compare_digest(expected.encode(), sent.encode())


def csrf_matches(session_token: object, sent: object) -> bool:
    return same_token(session_token, sent)


def file_token(secret: str, item_id: int, role: str, index: int = 0) -> str:
    """The opaque name under which an item's image is served: it says neither the path nor whether
    the image is the proposed chosen one, and cannot be made up without the secret."""
    key = hmac.new(secret.encode(), b"idglow-review-files", hashlib.sha256).digest()
    return hmac.new(key, f"{item_id}/{role}/{index}".encode(), hashlib.sha256).hexdigest()[:32]


def session_secret(folder: Path) -> str:
    """``IDGLOW_REVIEW_SECRET``, or a random secret kept (mode 600) in ``folder``, so sessions
    survive a restart of the server.

    Several processes may start at once on a fresh folder: each writes a complete secret to a
    file of its own and links it into place only if no secret is there yet (a hard link fails
    when the name exists), so all of them end up reading the one secret that won, never an empty
    or half-written file."""
    if os.environ.get("IDGLOW_REVIEW_SECRET"):
        return os.environ["IDGLOW_REVIEW_SECRET"]
    path = folder / "session_secret"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        _link_if_absent(path, secrets.token_hex(32))
    secret = path.read_text().strip()
    if not secret:
        raise RuntimeError(f"the session secret {path} is empty; delete it and start again (a new one is made)")
    return secret


def _link_if_absent(path: Path, content: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process won; its secret is complete, since it was written before the link
    finally:
        temporary.unlink(missing_ok=True)


@dataclass(frozen=True)
class LoginLimits:
    """Failed sign-ins allowed per account and per client address within ``window_seconds``;
    one more is refused for ``lock_seconds``, doubling with each lock in a row (at most
    ``max_lock_seconds``). A key with no attempt for ``forget_seconds`` starts afresh; a correct
    password clears its account's count."""

    account_failures: int = 5
    address_failures: int = 50
    window_seconds: float = 900.0
    lock_seconds: float = 60.0
    max_lock_seconds: float = 3600.0
    forget_seconds: float = 86400.0

    def lock_for(self, lockouts: int) -> float:
        """How long the ``lockouts``-th lock in a row lasts (1, 2, 3, ...)."""
        return min(self.lock_seconds * 2 ** (lockouts - 1), self.max_lock_seconds)
