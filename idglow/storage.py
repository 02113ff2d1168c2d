"""Atomic file writes, folder locks and content hashes for everything the pipeline stores.

A killed run must never leave a file that looks complete: every writer here writes to a
temporary name in the destination folder and renames it into place (``os.replace`` is atomic
on POSIX within one file system). The temporary ``.NAME.*.partial`` stays under an exclusive
``flock`` for as long as it is being written, so a later run can tell a partial file left by a
killed writer (nobody holds it) from one still being written, and removes only the former.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas and pyarrow load only for Parquet writes: the review store locks without them
    import pandas as pd

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def _locked_partial(create: Callable[[], str]) -> tuple[int, Path]:
    """Create a partial file or folder with ``create`` and hold an exclusive flock on it.

    A sweeper in another process may remove the new entry between its creation and the lock
    (before it is opened, or before the lock is taken); the lock is taken blocking and the entry
    checked to still be the one locked, else it is created again."""
    while True:
        path = Path(create())
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # swept before it could be opened
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd, path
        except FileNotFoundError:
            pass
        os.close(fd)


def remove_stale_partials(folder: str | os.PathLike[str], destination_name: str | None = None) -> list[Path]:
    """Remove the partial files and folders in ``folder`` (of ``destination_name`` only, if
    given) that no writer holds, i.e. left by a killed run; returns what was removed. Writers in
    this and other processes hold a lock on theirs, so those are kept. Call it once when starting
    to write a folder of outputs; ``atomic_path`` and ``atomic_dir`` also do it for their own
    destination before each write (a plain scan with string tests: cheap in a large folder)."""
    prefix = "." if destination_name is None else f".{destination_name}."
    try:
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries if e.name.startswith(prefix) and e.name.endswith(".partial"))
    except FileNotFoundError:
        return []
    removed = []
    for path in (Path(folder) / name for name in names):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # gone already, or not ours to open
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    log.warning("cannot lock %s to check it is stale (%s); leaving it", path, error)
                continue  # a live writer holds it
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                continue  # replaced under us: not the entry we checked
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except FileNotFoundError:
            continue
        finally:
            os.close(fd)
    if removed:
        log.info("removed %d stale partial file(s) in %s left by an interrupted run", len(removed), folder)
    return removed


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; rename it into place on success.

    On an exception the temporary file is removed and ``destination`` is left untouched. Stale
    partial files of the same destination (a killed earlier write) are removed first.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(destination.parent, destination.name)

    def create() -> str:
        fd, name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent)
        os.close(fd)
        return name

    lock, tmp = _locked_partial(create)
    try:
        yield tmp
        os.replace(tmp, destination)
    finally:
        if tmp.exists():
            tmp.unlink()
        os.close(lock)


@contextlib.contextmanager
def atomic_dir(destination: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a staging folder beside ``destination``; on success it replaces ``destination``
    (whatever was there), so a reader sees the old folder or the complete new one, never a part."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(destination.parent, destination.name)
    lock, staging = _locked_partial(
        lambda: tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent)
    )
    try:
        yield staging
        if destination.exists():
            shutil.rmtree(destination)
        os.replace(staging, destination)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
        os.close(lock)


@contextlib.contextmanager
def exclusive_lock(lock_file: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Hold an exclusive flock on ``lock_file`` (created if needed, never deleted: deleting a
    lock file lets two processes lock two different files). A second process waits until the
    first releases it, and logs that it is waiting for ``what``. The lock ends with the process,
    so a killed holder never blocks the next run."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for another process writing %s (it holds %s)", what, lock_file)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make the renames and removals in ``folder`` durable before what depends on them."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(destination: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(destination) as tmp:
        tmp.write_bytes(data)
    return Path(destination)


def write_text_atomic(destination: str | os.PathLike[str], text: str) -> Path:
    return write_bytes_atomic(destination, text.encode("utf-8"))


def write_json_atomic(destination: str | os.PathLike[str], obj: Any) -> Path:
    return write_text_atomic(destination, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet_atomic(destination: str | os.PathLike[str], frame: pd.DataFrame) -> Path:
    """Write ``frame`` as Parquet without its pandas index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    with atomic_path(destination) as tmp:
        pq.write_table(table, tmp)
    return Path(destination)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tensors_sha256(*paths: str | os.PathLike[str]) -> str:
    """The SHA-256 of the tensors in safetensors files: names (sorted), dtypes, shapes and bytes,
    then each file's metadata as canonical JSON. A model version is named by this, not by the
    file's SHA-256: safetensors 0.8 writes the header's metadata in a different order in each
    process, so the same weights saved twice give different files. Several files (a sharded
    model) hash as one set of tensors, whatever the split. JSON objects inside metadata values
    (diffusers' adapter config) are canonicalised too."""
    from safetensors import safe_open

    handles = {}
    owner: dict[str, str] = {}
    metadata = []
    with contextlib.ExitStack() as stack:
        for path in paths:
            handle = stack.enter_context(safe_open(str(path), framework="pt"))
            handles[str(path)] = handle
            for name in handle.keys():
                if name in owner:
                    raise ValueError(f"tensor {name!r} is in both {owner[name]} and {path}")
                owner[name] = str(path)
            metadata.append(_canonical_metadata(handle.metadata() or {}))
        digest = hashlib.sha256()
        for name in sorted(owner):
            handle = handles[owner[name]]
            piece = handle.get_slice(name)
            digest.update(json.dumps([name, piece.get_dtype(), list(piece.get_shape())]).encode() + b"\n")
            digest.update(_tensor_bytes(handle.get_tensor(name)))
    digest.update(json.dumps(sorted(set(metadata))).encode())  # the shards of one model repeat the same metadata
    return digest.hexdigest()


def _canonical_metadata(metadata: dict[str, str]) -> str:
    def canonical(value: str) -> str:
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        return json.dumps(parsed, sort_keys=True) if isinstance(parsed, dict | list) else value

    return json.dumps({key: canonical(value) for key, value in metadata.items()}, sort_keys=True)


def _tensor_bytes(tensor) -> memoryview:
    import torch

    # The bytes as stored (little-endian); bf16 and other dtypes numpy lacks go through uint8.
    return memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())


def relative_to_root(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> str:
    """``path`` as a POSIX path relative to ``root``: the form tables and manifests store, so a
    root that is moved or mounted elsewhere keeps every stored path valid. A path outside the
    root has no such form and is refused (it would break when the root moves)."""
    path, root = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    if not path.is_relative_to(root):
        raise ValueError(
            f"{path} is outside {root}: a stored path must lie under the root it is stored against "
            "(copy the file under the root, or store it relative to its own root)"
        )
    return path.relative_to(root).as_posix()


def resolve_under(root: str | os.PathLike[str], relative: str) -> Path:
    """The file a stored relative path names under the current ``root``. An absolute path (a
    table written before paths were stored relative) or one that climbs out of the root is
    refused: either would read from wherever the root used to be."""
    if Path(relative).is_absolute():
        raise ValueError(
            f"{relative!r} is absolute, but stored paths are relative to the storage root "
            "(a table written by an older version: materialise it again)"
        )
    root = Path(os.path.abspath(root))
    path = Path(os.path.normpath(root / relative))
    if not path.is_relative_to(root):
        raise ValueError(f"{relative!r} points outside the storage root {root}")
    return path


def copy_in(source: str | os.PathLike[str], folder: str | os.PathLike[str]) -> Path:
    """A copy of ``source`` (a file from outside the storage root, e.g. a user's manifest) in
    ``folder``, named by the hash of the source path so two files with one name stay apart; a
    copy of the same size already there is kept."""
    source = Path(os.path.abspath(source))
    copy = Path(folder) / f"{hashlib.sha256(str(source).encode()).hexdigest()[:16]}{source.suffix}"
    if not copy.is_file() or copy.stat().st_size != source.stat().st_size:
        with atomic_path(copy) as tmp:
            shutil.copyfile(source, tmp)
    return copy
