"""Preference quadruples (chosen, rejected, condition portraits, prompt) from four sources.

- ``real_vs_perturbed``: an authentic group photo against a controlled degradation of itself;
- ``real_vs_synthetic``: the authentic photo against the model's output for the same people
  (their portraits as conditions, the photo's caption as prompt), kept only when the synthetic
  identity is worse (the filter's job, after scoring);
- ``synthetic_vs_synthetic``: two candidates of the same job; which one is chosen is decided by
  the scores (``orientation == "by_score"``);
- ``synthetic_vs_perturbed``: a generated candidate against its own degradation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from idglow.perturb import apply, sample_perturbation
from idglow.storage import atomic_path

SOURCES = ("real_vs_perturbed", "real_vs_synthetic", "synthetic_vs_synthetic", "synthetic_vs_perturbed")
PAIR_COLUMNS = (
    "pair_id",
    "source",
    "orientation",
    "chosen_path",
    "rejected_path",
    "condition_paths",
    "prompt",
    "task",
    "group_id",
    "identities",
    "n_subjects",
    "perturbation",
    "seeds",
    "model_version",
    "round",
)


def pair_id(source: str, chosen: str, rejected: str) -> str:
    digest = hashlib.sha256(f"{source}|{Path(chosen).name}|{Path(rejected).name}".encode()).hexdigest()[:16]
    return f"pair-{digest}"


def _perturbed_copy(original: str, out_dir: Path, key: str, seed: int) -> tuple[str, dict]:
    rng = np.random.default_rng([seed, int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)])
    perturbation = sample_perturbation(rng, seed=int(rng.integers(2**31)))
    path = out_dir / f"{key}-{perturbation.kind}.png"
    if not path.exists():
        degraded = apply(Image.open(original), perturbation)
        with atomic_path(path) as tmp:
            degraded.save(tmp, format="PNG")
    return str(path), perturbation.as_dict()


def build_pairs(candidates: pd.DataFrame, photos: pd.DataFrame, perturbed_dir: Path, seed: int) -> pd.DataFrame:
    records: list[dict] = []

    def add(
        source,
        orientation,
        chosen,
        rejected,
        base,
        prompt,
        task,
        perturbation=None,
        seeds=(),
        model_version="",
        round_name="",
    ):
        records.append(
            {
                "pair_id": pair_id(source, chosen, rejected),
                "source": source,
                "orientation": orientation,
                "chosen_path": chosen,
                "rejected_path": rejected,
                "condition_paths": list(base["condition_paths"]),
                "prompt": prompt,
                "task": task,
                "group_id": base["group_id"],
                "identities": [int(i) for i in base["identities"]],
                "n_subjects": int(base["n_subjects"]),
                "perturbation": json.dumps(perturbation) if perturbation else "",
                "seeds": list(seeds),
                "model_version": model_version,
                "round": round_name,
            }
        )

    for photo in photos.to_dict("records"):
        rejected, perturbation = _perturbed_copy(photo["photo_path"], perturbed_dir, photo["photo_id"], seed)
        add(
            "real_vs_perturbed",
            "fixed",
            photo["photo_path"],
            rejected,
            photo,
            photo["caption"],
            "group_fusion",
            perturbation,
        )

    real_jobs = candidates[candidates["photo_id"].notna() & (candidates["photo_id"] != "")]
    photo_by_id = photos.set_index("photo_id")
    for candidate in real_jobs.to_dict("records"):
        photo = photo_by_id.loc[candidate["photo_id"]]
        add(
            "real_vs_synthetic",
            "fixed",
            photo["photo_path"],
            candidate["path"],
            candidate,
            candidate["prompt"],
            candidate["task"],
            seeds=[candidate["seed"]],
            model_version=candidate["model_version"],
            round_name=candidate["round"],
        )

    group_jobs = candidates[~candidates.index.isin(real_jobs.index)]
    for (_, job_id), job in group_jobs.groupby(["round", "job_id"], sort=True):
        job = job.sort_values("k").to_dict("records")
        for first, second in zip(job, job[1:], strict=False):
            add(
                "synthetic_vs_synthetic",
                "by_score",
                first["path"],
                second["path"],
                first,
                first["prompt"],
                first["task"],
                seeds=[first["seed"], second["seed"]],
                model_version=first["model_version"],
                round_name=first["round"],
            )
        best = job[0]
        rejected, perturbation = _perturbed_copy(best["path"], perturbed_dir, best["candidate_id"], seed)
        add(
            "synthetic_vs_perturbed",
            "fixed",
            best["path"],
            rejected,
            best,
            best["prompt"],
            best["task"],
            perturbation,
            seeds=[best["seed"]],
            model_version=best["model_version"],
            round_name=best["round"],
        )

    frame = pd.DataFrame(records, columns=list(PAIR_COLUMNS))
    return frame.drop_duplicates("pair_id").reset_index(drop=True)
