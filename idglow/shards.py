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
shard) is written last. A killed run leaves only complete shards; a rerun rewrites the set.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import webdataset as wds
from PIL import Image

from idglow.storage import sha256_file, write_json_atomic

MANIFEST = "manifest.json"


def png_bytes(path: str | Path) -> bytes:
    """The file itself when it is a PNG, else its pixels encoded losslessly as PNG."""
    data = Path(path).read_bytes()
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return data
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(path: str | Path) -> bytes:
    """The file itself when it is a JPEG, else encoded as JPEG (quality 95)."""
    data = Path(path).read_bytes()
    if data[:3] == b"\xff\xd8\xff":
        return data
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def safe_key(text: str) -> str:
    return text.replace(".", "_")


def write_shard_sets(
    samples: Iterable[dict], out_dir: Path, prefix: str, max_size_bytes: int = 512 * 1024 * 1024, max_count: int = 100_000,
) -> dict:
    """Write ``samples`` (each with ``__key__``, ``json['n_subjects']`` and its files) as one shard set
    per subject count under ``out_dir``; returns the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
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
                shards.append({"file": target.name, "n_subjects": n, "samples": count,
                               "bytes": target.stat().st_size, "sha256": sha256_file(target)})

            writer = wds.ShardWriter(str(staging / f"{prefix}-n{n}-%06d.tar"), maxcount=max_count,
                                     maxsize=max_size_bytes, post=publish, verbose=0,
                                     mtime=0.0)  # reproducible tar bytes: same samples, same SHA-256
            state["writer"] = writer
            writers[n] = writer
        return writers[n]

    for sample in samples:
        if "." in sample["__key__"]:
            raise ValueError(f"sample key {sample['__key__']!r} contains a dot")
        meta = sample["json"]
        writer_for(int(meta["n_subjects"])).write({**sample, "json": json.dumps(meta, sort_keys=True, default=str).encode()})
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
    write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest


def manifest_hash(out_dir: Path) -> str:
    return sha256_file(out_dir / MANIFEST)


def shard_urls(out_dir: Path, n_subjects: int | None = None) -> list[str]:
    """The shard files of a set listed in its manifest (optionally one subject count)."""
    manifest = json.loads((out_dir / MANIFEST).read_text())
    return [str(out_dir / s["file"]) for s in manifest["shards"] if n_subjects in (None, s["n_subjects"])]


def condition_files(n_subjects: int) -> list[str]:
    return [f"cond.{i}.jpg" for i in range(n_subjects)]
