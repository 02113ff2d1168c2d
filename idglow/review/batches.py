"""From the automatic filter's table to a review batch (framework-free; the Dagster asset and
``idglow review publish`` both use it)."""

from __future__ import annotations

import hashlib

import pandas as pd

from idglow.scoring import METRICS


def review_payload(row: dict) -> dict:
    """What a reviewer is shown for a pair (and what the written rule of review mode auto reads)."""
    return {
        "pair_id": row["pair_id"],
        "prompt": row["prompt"],
        "task": row["task"],
        "n_subjects": int(row["n_subjects"]),
        "source": row["source"],
        "condition_paths": [str(p) for p in row["condition_paths"]],
        "chosen_path": row["chosen_path"],
        "rejected_path": row["rejected_path"],
        "scores": {side: {m: float(row[f"{side}_{m}"]) for m in METRICS} for side in ("chosen", "rejected")},
        "deltas": {m: float(row[f"delta_{m}"]) for m in METRICS},
    }


def kept_pairs_batch(filtered: pd.DataFrame, prefix: str = "batch") -> tuple[str, list[dict]]:
    """The kept pairs as payloads, and a batch id that is a hash of their pair ids (so publishing
    the same pairs again names the same batch)."""
    kept = filtered[filtered["kept"]]
    batch_id = f"{prefix}-" + hashlib.sha256("\n".join(sorted(kept["pair_id"])).encode()).hexdigest()[:12]
    return batch_id, [review_payload(r) for r in kept.to_dict("records")]
