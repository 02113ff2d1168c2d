"""Pairs per second of the batched pair scorer against the naive loop, on the demo profile.

The naive loop is the obvious first version: for each pair and each image, call every model on
that one image (insightface ``get``, CLIP's image and text towers, the aesthetic MLP) with no
batching and no reuse of the condition portraits between pairs. Both run in the same process on
the same pairs, and their scores must agree.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scoring.py [--photos 24] [--candidates 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from idglow.data.celebahq import ingest_celebahq
from idglow.data.demo_celebahq import write_demo_celebahq
from idglow.data.group_photos import write_demo_group_photos
from idglow.data.groups import make_training_groups, split_identities
from idglow.editing import ReferenceBudget
from idglow.generation import GenerationSettings, generate_candidates
from idglow.models.hub import ModelHub
from idglow.pairs import build_pairs
from idglow.profiles import load_profile
from idglow.prompts import static_prompt
from idglow.scoring import METRICS, ImageScorer, naive_scores, score_pairs


def demo_pairs(hub: ModelHub, work: Path, photos: int, candidates: int) -> pd.DataFrame:
    dataset = write_demo_celebahq(work / "celebahq")
    catalog = ingest_celebahq(dataset.root, expected_size=256, progress=False).catalog
    splits = split_identities(catalog, 10, seed=0)
    groups = make_training_groups(catalog, splits, groups_of_two=8, groups_of_three=6, seed=0)
    photo_table = write_demo_group_photos(groups, catalog, dataset.root, work / "photos", photos, 256, 0)
    # As in the demo: every training group x both tasks x (static, dynamic) prompt, K candidates each,
    # so many pairs share their condition portraits.
    jobs = pd.concat(
        [
            groups.assign(
                job_id=groups["group_id"] + f"-{task}-{kind}",
                task=task,
                prompt_kind=kind,
                photo_id=None,
                prompt=[static_prompt(task, n) for n in groups["n_subjects"]],
            )
            for task in ("group_fusion", "age_transformed")
            for kind in ("static", "dynamic")
        ],
        ignore_index=True,
    )
    jobs["condition_paths"] = [[str(dataset.root / p) for p in ps] for ps in jobs["condition_paths"]]
    settings = GenerationSettings(
        64, 64, 4, 1.0, candidates, 0, ReferenceBudget.of_profile(load_profile("demo", env={}))
    )
    table, _ = generate_candidates(
        hub.generator(), jobs, settings, work / "candidates", "bench", "base", progress=False
    )
    return build_pairs(table, photo_table, work / "perturbed", seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=Path("var/models/demo"))
    parser.add_argument("--photos", type=int, default=6, help="demo group photos (real pairs)")
    parser.add_argument("--candidates", type=int, default=2, help="candidates per synthetic job")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hub = ModelHub("demo", args.models_dir, device="cpu")
    with tempfile.TemporaryDirectory() as folder:
        pairs = demo_pairs(hub, Path(folder), args.photos, args.candidates)
        scorer = ImageScorer(hub, progress=False)
        score_pairs(scorer, pairs.head(2))  # load every model before timing either side
        naive_scores(hub, pairs.head(2))

        started = time.perf_counter()
        batched = score_pairs(scorer, pairs)
        batched_s = time.perf_counter() - started
        started = time.perf_counter()
        naive = naive_scores(hub, pairs)
        naive_s = time.perf_counter() - started

    columns = [f"delta_{m}" for m in METRICS]
    worst = float(np.abs(batched[columns].to_numpy() - naive[columns].to_numpy()).max())
    images = len(set(pairs["chosen_path"]) | set(pairs["rejected_path"]))
    print(f"{len(pairs)} pairs ({images} distinct images, {pairs['source'].value_counts().to_dict()})")
    print(f"{'scorer':<10}{'seconds':>10}{'pairs/s':>10}")
    print(f"{'naive':<10}{naive_s:>10.2f}{len(pairs) / naive_s:>10.1f}")
    print(f"{'batched':<10}{batched_s:>10.2f}{len(pairs) / batched_s:>10.1f}")
    print(f"speed-up: {naive_s / batched_s:.1f}x; largest difference in any delta: {worst:.2e}")


if __name__ == "__main__":
    main()
