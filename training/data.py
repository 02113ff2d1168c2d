"""Deterministic, resumable batches from the SFT and DPO WebDataset shards.

Each shard set holds one subject count, so reading one shard at a time and batching within it
gives batches homogeneous in N. The shard order of every epoch is a seeded permutation
(``shardshuffle`` is done here, explicitly, so the order is reproducible), each rank takes its
share of that order (``shards_for_rank``), and the data position is the number of batches
already consumed: a resumed run skips exactly those. The samples are decoded in the training
process (no DataLoader workers): the encodings are cached on disk (``training.encodings``), so
decoding is not on the step's critical path. Every shard is checked against the manifest's SHA-256 each
time it is opened (``idglow.shards.open_shard``): a shard set rewritten or damaged under a
running job stops it with an error naming the shard, instead of feeding it other samples.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from idglow.shards import MANIFEST, open_shard, read_manifest, shard_samples


@dataclass
class Sample:
    key: str
    meta: dict
    images: dict[str, Image.Image]  # "target" (SFT) or "chosen"/"rejected" (DPO)
    conditions: list[Image.Image]


def _decode(raw: dict) -> Sample:
    meta = json.loads(raw["json"])
    n = int(meta["n_subjects"])
    images = {
        name[:-4]: Image.open(io.BytesIO(raw[name])).convert("RGB")
        for name in ("target.png", "chosen.png", "rejected.png")
        if name in raw
    }
    conditions = [Image.open(io.BytesIO(raw[f"cond.{i}.jpg"])).convert("RGB") for i in range(n)]
    return Sample(raw["__key__"], meta, images, conditions)


def shard_order(urls: list[str], seed: int, epoch: int) -> list[str]:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return [urls[i] for i in torch.randperm(len(urls), generator=generator).tolist()]


def shards_for_rank(urls: list[str], seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[str]:
    """This rank's shards for one epoch: the epoch's seeded permutation, dealt round-robin. With
    fewer shards than ranks the deal wraps around, so every rank always has data (some shards are
    then read by two ranks in that epoch)."""
    order = shard_order(urls, seed, epoch)
    return [order[i % len(order)] for i in range(rank, max(len(order), world), world)]


def batches(
    shard_dir: Path,
    batch_size: int,
    seed: int,
    skip: int = 0,
    rank: int = 0,
    world: int = 1,
    manifest: dict | None = None,
) -> Iterator[list[Sample]]:
    """Endless batches (epoch after epoch) of samples with one subject count, after skipping
    ``skip`` batches; a batch never mixes shards, so never mixes subject counts (a shard's last
    incomplete batch is dropped). Under data parallelism each rank reads its own shards
    (``shards_for_rank``); the split is by rank, not by webdataset's node splitter, because it
    has to stay the same on resume. ``manifest`` is the shard manifest already read by the
    caller (so it is the one whose hash the caller records); by default it is read here."""
    entries = {str(shard_dir / s["file"]): s for s in (manifest or read_manifest(shard_dir))["shards"]}
    if not entries:
        raise ValueError(f"no shards listed in {shard_dir / MANIFEST}")
    urls = list(entries)
    produced, epoch = 0, 0
    while True:
        for url in shards_for_rank(urls, seed, epoch, rank, world):
            with open_shard(shard_dir, entries[url]) as handle:
                batch: list[Sample] = []
                for raw in shard_samples(handle, url):
                    batch.append(_decode(raw) if produced >= skip else Sample(raw["__key__"], {}, {}, []))
                    if len(batch) == batch_size:
                        if produced >= skip:
                            yield batch
                        produced += 1
                        batch = []
        epoch += 1


def to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """(3, size, size) RGB in [-1, 1], for a sample's square target images. The condition
    portraits are resized by ``idglow.editing.prepare_references``, as inference resizes them."""
    resized = image.resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(resized, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
