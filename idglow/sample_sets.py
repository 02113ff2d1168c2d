"""From tables to training samples: which examples SFT gets, and the shard sample dicts."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd

from idglow.scoring import METRICS
from idglow.shards import jpeg_bytes, png_bytes, safe_key

SFT_COLUMNS = (
    "example_id",
    "task",
    "source",
    "target_path",
    "condition_paths",
    "prompt",
    "group_id",
    "identities",
    "n_subjects",
)


def select_sft_examples(
    photos: pd.DataFrame, filtered: pd.DataFrame, min_identity: float, min_aesthetic: float
) -> pd.DataFrame:
    """Real photos (Task 1) plus chosen synthetic images of kept pairs that clear both bars."""
    rows = [
        {
            "example_id": safe_key(f"sft-{photo.photo_id}"),
            "task": "group_fusion",
            "source": "real_group_photo",
            "target_path": photo.photo_path,
            "condition_paths": list(photo.condition_paths),
            "prompt": photo.caption,
            "group_id": photo.group_id,
            "identities": [int(i) for i in photo.identities],
            "n_subjects": int(photo.n_subjects),
        }
        for photo in photos.itertuples()
    ]
    synthetic = filtered[
        filtered["kept"]
        & filtered["source"].isin(["synthetic_vs_synthetic", "synthetic_vs_perturbed"])
        & (filtered["chosen_identity"] >= min_identity)
        & (filtered["chosen_aesthetic"] >= min_aesthetic)
    ].drop_duplicates("chosen_path")
    rows += [
        {
            "example_id": safe_key(f"sft-{pair.pair_id}"),
            "task": pair.task,
            "source": "filtered_synthetic",
            "target_path": pair.chosen_path,
            "condition_paths": list(pair.condition_paths),
            "prompt": pair.prompt,
            "group_id": pair.group_id,
            "identities": [int(i) for i in pair.identities],
            "n_subjects": int(pair.n_subjects),
        }
        for pair in synthetic.itertuples()
    ]
    return pd.DataFrame(rows, columns=list(SFT_COLUMNS))


def _conditions(paths, resolve: Callable[[str], Path]) -> dict[str, bytes]:
    return {f"cond.{i}.jpg": jpeg_bytes(resolve(p)) for i, p in enumerate(paths)}


def sft_samples(examples: pd.DataFrame, resolve: Callable[[str], Path] = Path) -> Iterator[dict]:
    """The samples of ``examples``, whose stored paths ``resolve`` turns into files (the table's
    stored form is what a sample records, so shards name no machine's absolute path)."""
    for row in examples.sort_values(["n_subjects", "example_id"]).itertuples():
        yield {
            "__key__": row.example_id,
            "target.png": png_bytes(resolve(row.target_path)),
            **_conditions(row.condition_paths, resolve),
            "json": {
                "task": row.task,
                "group_id": row.group_id,
                "identities": list(row.identities),
                "n_subjects": int(row.n_subjects),
                "prompt": row.prompt,
                "sources": [row.source],
                "target_file": str(row.target_path),
            },
        }


def dpo_samples(pairs: pd.DataFrame, resolve: Callable[[str], Path] = Path) -> Iterator[dict]:
    for row in pairs.sort_values(["n_subjects", "pair_id"]).to_dict("records"):
        metrics = {f"{side}_{m}": float(row[f"{side}_{m}"]) for side in ("chosen", "rejected") for m in METRICS}
        yield {
            "__key__": safe_key(row["pair_id"]),
            "chosen.png": png_bytes(resolve(row["chosen_path"])),
            "rejected.png": png_bytes(resolve(row["rejected_path"])),
            **_conditions(row["condition_paths"], resolve),
            "json": {
                "task": row["task"],
                "pair_id": row["pair_id"],
                "group_id": row["group_id"],
                "identities": list(row["identities"]),
                "n_subjects": int(row["n_subjects"]),
                "prompt": row["prompt"],
                "source": row["source"],
                "seeds": [int(s) for s in row["seeds"]],
                "perturbation": json.loads(row["perturbation"]) if row["perturbation"] else None,
                "metrics": metrics,
                "deltas": {m: float(row[f"delta_{m}"]) for m in METRICS},
                "model_versions": {"generator": row["model_version"]},
                "round": row["round"],
                "review_decision": row["review_decision"],
                "review_mode": row["review_mode"],
            },
        }
