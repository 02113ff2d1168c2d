"""WebDataset shards for SFT and DPO, one shard set per subject count, written atomically.

Sample schema (docs/architecture in the README):

- SFT: ``target.png``, ``cond.0.jpg`` ... ``cond.{N-1}.jpg``, ``json`` (task, group_id,
  identities, n_subjects, prompt, sources);
- DPO: ``chosen.png``, ``rejected.png`` (PNG, so no re-encoding touches the perturbations),
  the conditions, ``json`` (task, pair_id, group_id, identities, n_subjects, prompt, seeds,
  perturbation, every metric and delta, model versions, review decision).

Keys contain no dots (webdataset splits a file name at the first dot). Every shard set is
homogeneous in N, so readers that infer columns from the first samples (Hugging Face
``datasets``) never drop a portrait. ``webdataset.ShardWriter`` writes into a staging folder and
its ``post`` hook renames each finished shard into place; the manifest (count and SHA-256 per
shard) is written last, atomically. A rewrite removes the old manifest before it touches a
shard, so a killed rewrite leaves no manifest, never one that lists other shards' hashes; and
every reader checks each shard's SHA-256 against the manifest when it opens it (``open_shard``),
so a shard changed after the manifest was read is refused, not read. One writer at a time per
folder: ``write_shard_sets`` holds an exclusive lock on the folder's ``.lock`` for the whole
write, and a second writer waits for it (then rewrites the set itself).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import webdataset as wds

from idglow.data.images import is_rgb_source, load_rgb
from idglow.storage import exclusive_lock, fsync_dir, sha256_bytes, sha256_file, write_json_atomic

MANIFEST = "manifest.json"
LOCK = ".lock"
_CHUNK = 1 << 20


class ShardIntegrityError(ValueError):
    """A shard set whose files do not match its manifest (or that has none)."""


def _encoded(path: str | Path, magic: bytes, image_format: str, **options) -> bytes:
    """The file itself when it already is ``image_format`` with RGB pixels; else its pixels as
    RGB (grayscale and CMYK sources converted, see idglow/data/images.py) encoded that way."""
    data = Path(path).read_bytes()
    if data.startswith(magic) and is_rgb_source(path):
        return data
    buffer = io.BytesIO()
    load_rgb(path).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def png_bytes(path: str | Path) -> bytes:
    """The image as RGB PNG bytes (the file itself when it is one)."""
    return _encoded(path, b"\x89PNG\r\n\x1a\n", "PNG")


def jpeg_bytes(path: str | Path) -> bytes:
    """The image as RGB JPEG bytes (the file itself when it is one, else quality 95)."""
    return _encoded(path, b"\xff\xd8\xff", "JPEG", quality=95)


def safe_key(text: str) -> str:
    return text.replace(".", "_")


def write_shard_sets(
    samples: Iterable[dict],
    out_dir: Path,
    prefix: str,
    max_size_bytes: int = 512 * 1024 * 1024,
    max_count: int = 100_000,
) -> dict:
    """Write ``samples`` (each with ``__key__``, ``json['n_subjects']`` and its files) as one shard set
    per subject count under ``out_dir``; returns the manifest. Waits while another process is
    writing the same folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out_dir / LOCK, f"shards in {out_dir}"):
        # The old manifest goes before any shard changes: a reader then finds no manifest (and
        # refuses) rather than one whose hashes belong to shards being replaced.
        (out_dir / MANIFEST).unlink(missing_ok=True)
        fsync_dir(out_dir)
        return _write_locked(samples, out_dir, prefix, max_size_bytes, max_count)


def _write_locked(samples: Iterable[dict], out_dir: Path, prefix: str, max_size_bytes: int, max_count: int) -> dict:
    staging = out_dir / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    shards: list[dict] = []
    writers: dict[int, wds.ShardWriter] = {}

    def writer_for(n: int) -> wds.ShardWriter:
        if n not in writers:
            state: dict = {}

            def publish(fname: str, n=n, state=state) -> None:
                count = state["writer"].count
                source = Path(fname)
                if count == 0:
                    source.unlink()
                    return
                target = out_dir / source.name
                os.replace(source, target)
                shards.append(
                    {
                        "file": target.name,
                        "n_subjects": n,
                        "samples": count,
                        "bytes": target.stat().st_size,
                        "sha256": sha256_file(target),
                    }
                )

            writer = wds.ShardWriter(
                str(staging / f"{prefix}-n{n}-%06d.tar"),
                maxcount=max_count,
                maxsize=max_size_bytes,
                post=publish,
                verbose=0,
                mtime=0.0,
            )  # reproducible tar bytes: same samples, same SHA-256
            state["writer"] = writer
            writers[n] = writer
        return writers[n]

    for sample in samples:
        if "." in sample["__key__"]:
            raise ValueError(f"sample key {sample['__key__']!r} contains a dot")
        meta = sample["json"]
        writer_for(int(meta["n_subjects"])).write(
            {**sample, "json": json.dumps(meta, sort_keys=True, default=str).encode()}
        )
    for writer in writers.values():
        writer.close()

    published = {s["file"] for s in shards}
    for stale in out_dir.glob(f"{prefix}-n*-*.tar"):
        if stale.name not in published:
            stale.unlink()
    shutil.rmtree(staging, ignore_errors=True)
    totals: dict[int, int] = defaultdict(int)
    for shard in shards:
        totals[shard["n_subjects"]] += shard["samples"]
    manifest = {
        "prefix": prefix,
        "shards": sorted(shards, key=lambda s: s["file"]),
        "samples": sum(totals.values()),
        "samples_by_n_subjects": {str(n): c for n, c in sorted(totals.items())},
    }
    fsync_dir(out_dir)  # the shards' renames are durable before the manifest that lists them
    write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest


def _manifest_bytes(out_dir: Path) -> bytes:
    path = out_dir / MANIFEST
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ShardIntegrityError(
            f"{path} does not exist: the shards in {out_dir} were never written, or a write was interrupted "
            "(a rewrite removes the manifest first); write the shard set again"
        ) from None


def load_manifest(out_dir: Path) -> tuple[dict, str]:
    """The manifest and its SHA-256, from one read (so the hash names the manifest returned)."""
    data = _manifest_bytes(out_dir)
    return json.loads(data), sha256_bytes(data)


def read_manifest(out_dir: Path) -> dict:
    return load_manifest(out_dir)[0]


def manifest_hash(out_dir: Path) -> str:
    return load_manifest(out_dir)[1]


def open_shard(out_dir: Path, entry: dict) -> BinaryIO:
    """Open one shard of the manifest for reading, after checking its SHA-256 against the
    manifest's ``entry``. The handle returned is the file that was hashed, so a shard replaced
    after the check is not the one read."""
    path = out_dir / entry["file"]
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise ShardIntegrityError(
            f"shard {path} listed in {out_dir / MANIFEST} does not exist; write the shard set again"
        ) from None
    digest = hashlib.sha256()
    while chunk := handle.read(_CHUNK):
        digest.update(chunk)
    if digest.hexdigest() != entry["sha256"]:
        handle.close()
        raise ShardIntegrityError(
            f"shard {path} has SHA-256 {digest.hexdigest()} but {out_dir / MANIFEST} lists {entry['sha256']}: "
            "the shard changed after the manifest was written (an interrupted or concurrent rewrite, or damage); "
            "write the shard set again"
        )
    handle.seek(0)
    return handle


def shard_samples(handle: BinaryIO, url: str) -> Iterator[dict]:
    """The raw samples of one open shard, as ``webdataset.WebDataset`` yields them."""
    return wds.tariterators.group_by_keys(wds.tariterators.tar_file_expander([{"url": url, "stream": handle}]))


def shard_urls(out_dir: Path, n_subjects: int | None = None, verify: bool = True) -> list[str]:
    """The shard files of a set listed in its manifest (optionally one subject count), each
    checked against the manifest's SHA-256 (``verify``) for readers that open them by name."""
    entries = [s for s in read_manifest(out_dir)["shards"] if n_subjects in (None, s["n_subjects"])]
    if verify:
        for entry in entries:
            open_shard(out_dir, entry).close()
    return [str(out_dir / s["file"]) for s in entries]


def condition_files(n_subjects: int) -> list[str]:
    return [f"cond.{i}.jpg" for i in range(n_subjects)]
