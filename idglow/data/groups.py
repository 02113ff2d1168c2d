"""Identity splits and the groups of people that every later stage works on.

- ``split_identities``: benchmark identities (held out from all training) and training
  identities, disjoint by construction and checked again by ``overlapping_identities``.
- ``make_benchmark_groups``: each benchmark identity used exactly once, in groups of two and
  three, one reference portrait per person; the same groups serve Task 1 and Task 2.
- ``make_training_groups``: groups of training identities that have several portraits, so the
  portrait shown as a condition differs from the ones a group photo reproduces.

Everything is deterministic from a seed; ``group_id`` depends only on the seed, the kind of
group and its (unordered) membership.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

TASKS: tuple[str, ...] = ("group_fusion", "age_transformed")
"""Task 1 (direct group fusion) and Task 2 (the same people as young children)."""

SPLIT_COLUMNS = ("identity", "split", "n_images", "partitions")
GROUP_COLUMNS = (
    "group_id",
    "kind",
    "n_subjects",
    "identities",
    "condition_hq_idx",
    "condition_paths",
    "target_hq_idx",
    "tasks",
)


class NotEnoughIdentities(ValueError):
    """The catalog cannot supply the identities a split or a set of groups asks for."""


def group_id(kind: str, identities: Sequence[int], seed: int) -> str:
    """A stable id from the group's kind, its unordered membership and the seed."""
    members = ",".join(str(i) for i in sorted(int(x) for x in identities))
    digest = hashlib.sha256(f"{kind}|{seed}|{members}".encode()).hexdigest()[:12]
    return f"{kind}-{len(identities)}-{digest}"


def split_identities(
    catalog: pd.DataFrame,
    benchmark_identities: int,
    seed: int,
    benchmark_partitions: Sequence[str] = ("test",),
    training_partitions: Sequence[str] = ("train", "val"),
) -> pd.DataFrame:
    """Assign each identity of the catalog to ``benchmark``, ``train`` or ``unused``.

    Benchmark identities are drawn (seeded) from identities whose every image lies in
    ``benchmark_partitions``; training identities are those whose every image lies in
    ``training_partitions`` and that are not benchmark identities; any other identity is unused.
    """
    per_identity = (
        catalog.groupby("identity")
        .agg(
            n_images=("hq_idx", "size"),
            partitions=("partition", lambda values: ",".join(sorted(set(values)))),
        )
        .reset_index()
    )
    partition_sets = per_identity["partitions"].str.split(",").map(set)
    in_benchmark_partitions = partition_sets.map(lambda s: s <= set(benchmark_partitions))
    candidates = np.sort(per_identity.loc[in_benchmark_partitions, "identity"].to_numpy())
    if len(candidates) < benchmark_identities:
        raise NotEnoughIdentities(
            f"{benchmark_identities} benchmark identities requested, but only {len(candidates)} identities "
            f"have all their images in partitions {list(benchmark_partitions)}"
        )
    chosen = set(np.random.default_rng(seed).choice(candidates, size=benchmark_identities, replace=False).tolist())
    in_training_partitions = partition_sets.map(lambda s: s <= set(training_partitions))
    split = np.where(
        per_identity["identity"].isin(chosen),
        "benchmark",
        np.where(in_training_partitions, "train", "unused"),
    )
    result = per_identity.assign(split=split)[list(SPLIT_COLUMNS)]
    return result.sort_values("identity").reset_index(drop=True)


def overlapping_identities(splits: pd.DataFrame) -> list[int]:
    """Identities that appear on both the training and the benchmark side (should be none)."""
    train = set(splits.loc[splits["split"] == "train", "identity"])
    benchmark = set(splits.loc[splits["split"] == "benchmark", "identity"])
    return sorted(int(i) for i in train & benchmark)


def _images_by_identity(catalog: pd.DataFrame) -> dict[int, list[tuple[int, str]]]:
    ordered = catalog.sort_values("hq_idx")
    images: dict[int, list[tuple[int, str]]] = {}
    for identity, hq_idx, path in zip(ordered["identity"], ordered["hq_idx"], ordered["path"], strict=True):
        images.setdefault(int(identity), []).append((int(hq_idx), str(path)))
    return images


def _group_record(
    kind: str,
    members: Sequence[int],
    images: dict[int, list[tuple[int, str]]],
    rng: np.random.Generator,
    seed: int,
) -> dict:
    conditions, targets = [], []
    for identity in members:
        portraits = images[identity]
        pick = int(rng.integers(len(portraits)))
        conditions.append(portraits[pick])
        targets.append([hq for i, (hq, _) in enumerate(portraits) if i != pick])
    return {
        "group_id": group_id(kind, members, seed),
        "kind": kind,
        "n_subjects": len(members),
        "identities": [int(m) for m in members],
        "condition_hq_idx": [hq for hq, _ in conditions],
        "condition_paths": [path for _, path in conditions],
        "target_hq_idx": targets,
        "tasks": list(TASKS),
    }


def make_benchmark_groups(
    catalog: pd.DataFrame, splits: pd.DataFrame, groups_of_two: int, groups_of_three: int, seed: int
) -> pd.DataFrame:
    """Every benchmark identity exactly once: ``groups_of_two`` pairs, then ``groups_of_three`` triples."""
    identities = np.sort(splits.loc[splits["split"] == "benchmark", "identity"].to_numpy())
    needed = 2 * groups_of_two + 3 * groups_of_three
    if len(identities) != needed:
        raise NotEnoughIdentities(
            f"{groups_of_two} groups of two and {groups_of_three} of three need exactly {needed} "
            f"benchmark identities; the split has {len(identities)}"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(identities).tolist()
    sizes = [2] * groups_of_two + [3] * groups_of_three
    images = _images_by_identity(catalog)
    records, start = [], 0
    for size in sizes:
        records.append(_group_record("bench", order[start : start + size], images, rng, seed))
        start += size
    return pd.DataFrame(records, columns=list(GROUP_COLUMNS))


def make_training_groups(
    catalog: pd.DataFrame,
    splits: pd.DataFrame,
    groups_of_two: int,
    groups_of_three: int,
    seed: int,
    min_portraits: int = 2,
) -> pd.DataFrame:
    """Groups of training identities with at least ``min_portraits`` images each.

    Identities are used round-robin in seeded shuffles, so each is used about equally often;
    no identity appears twice in a group and no membership is repeated. The condition
    portrait of each subject is one of their images; ``target_hq_idx`` lists the others.
    """
    images = _images_by_identity(catalog)
    train = splits.loc[splits["split"] == "train", "identity"]
    eligible = np.sort([int(i) for i in train if len(images.get(int(i), [])) >= min_portraits])
    if (groups_of_three and len(eligible) < 3) or (groups_of_two and len(eligible) < 2):
        raise NotEnoughIdentities(f"only {len(eligible)} training identities have {min_portraits} or more portraits")
    sizes = [2] * groups_of_two + [3] * groups_of_three
    rng = np.random.default_rng(seed)
    rng.shuffle(sizes)
    pool: list[int] = []
    records: list[dict] = []
    seen: set[tuple[int, ...]] = set()
    max_attempts = 20 * len(sizes) + 100
    attempts = 0
    while len(records) < len(sizes):
        attempts += 1
        if attempts > max_attempts:
            raise NotEnoughIdentities(
                f"could not form {len(sizes)} distinct groups from {len(eligible)} training identities"
            )
        size = sizes[len(records)]
        if len(pool) < size:
            pool = rng.permutation(eligible).tolist()
        members, pool = pool[:size], pool[size:]
        key = tuple(sorted(members))
        if key in seen:
            continue
        seen.add(key)
        records.append(_group_record("train", members, images, rng, seed))
    return pd.DataFrame(records, columns=list(GROUP_COLUMNS))
