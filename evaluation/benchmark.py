"""The benchmark's per-image metrics and their aggregates (section 4; protocol in method.md).

Per generated image, against the group's condition portraits and the prompt (``image_scores``,
from the batched ``idglow.scoring.ImageScorer`` the pair scores use too):

- ``face_sim``: FaceSim, the Hungarian-matched mean cosine similarity of the portraits' faces to
  the image's faces (``evaluation.metrics.face_similarity``); a portrait without a matching face
  counts 0, and ``missing_faces`` / ``missing_face_rate`` report those on their own.
- ``aesthetic``: the LAION predictor on the image's CLIP embedding.
- ``clip_score``: cosine similarity of the image's and the prompt's CLIP embeddings.
- ``people_count``: ``evaluation.metrics.people_count_score``.
- ``age``: the face pack's estimated age, averaged over the faces found (Task 2 asks for children);
- ``child_rate``: the share of the faces found that the age model puts under
  ``evaluation.metrics.CHILD_AGE_BELOW`` (18) years, NaN when none is found.

Aggregates carry bootstrap 95% confidence intervals (``scipy.stats.bootstrap``).

This module is the groundwork of the benchmark issue: the scoring and aggregation that the
benchmark assets, the external-manifest command and the promotion check are to share.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from scipy.stats import bootstrap

if TYPE_CHECKING:  # the scorer pulls in the whole model hub
    from idglow.scoring import ImageScorer

METRIC_COLUMNS = ("face_sim", "missing_face_rate", "aesthetic", "clip_score", "people_count", "age", "child_rate")


def bootstrap_ci(values, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its percentile-bootstrap confidence interval."""
    data = np.asarray(values, dtype=np.float64)
    data = data[~np.isnan(data)]
    if len(data) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(data.mean())
    if len(data) == 1 or np.all(data == data[0]):
        return mean, mean, mean
    result = bootstrap(
        (data,),
        np.mean,
        confidence_level=confidence,
        n_resamples=resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return mean, float(result.confidence_interval.low), float(result.confidence_interval.high)


def aggregate(samples: pd.DataFrame, by: list[str], metrics: tuple[str, ...] = METRIC_COLUMNS) -> pd.DataFrame:
    """One row per group of ``by``: n, and per metric its mean with ``_low`` / ``_high`` bounds."""
    rows = []
    for key, group in samples.groupby(by, sort=True):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        row["n"] = len(group)
        for metric in metrics:
            if metric in group:
                row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = bootstrap_ci(
                    group[metric].to_numpy(dtype=float)
                )
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass
class ImageScores:
    face_sim: float
    faces_found: int
    missing_faces: int
    missing_face_rate: float
    aesthetic: float
    clip_score: float
    people_count: float
    age: float
    child_rate: float


def image_scores(
    scorer: ImageScorer, images: list[str], condition_paths: list[list[str]], prompts: list[str]
) -> list[ImageScores]:
    """The benchmark's metrics of each image file against its portraits and prompt, scored in one
    batch (``idglow.scoring.ImageScorer``: FaceSim is its identity, the CLIP score its semantic)."""
    scored = scorer.score(images, condition_paths, prompts, age=True)
    results = []
    for row, paths in zip(scored.itertuples(), condition_paths, strict=True):
        n, found = len(paths), int(row.faces)
        missing = max(n - found, 0)
        results.append(
            ImageScores(
                face_sim=float(row.identity),
                faces_found=found,
                missing_faces=missing,
                missing_face_rate=missing / n,
                aesthetic=float(row.aesthetic),
                clip_score=float(row.semantic),
                people_count=float(row.people_count),
                age=float(row.age),
                child_rate=float(row.child_rate),
            )
        )
    return results


# ------------------------------------------------------------------- external images

MANIFEST_KEYS = ("group_id", "task", "prompt_kind", "image")


@dataclass
class ManifestProblem:
    row: int
    image: str
    reason: str


def read_external_manifest(path: Path) -> tuple[pd.DataFrame, list[ManifestProblem]]:
    """Images made elsewhere (another model, a commercial service), one per benchmark group, task
    and prompt kind: a JSON list or a CSV with ``group_id, task, prompt_kind, image`` (paths
    relative to the manifest). Returns the readable rows and, never silently, every row that
    could not be used and why."""
    path = Path(path)
    if path.suffix == ".json":
        frame = pd.DataFrame(json.loads(path.read_text()))
    else:
        frame = pd.read_csv(path)
    absent = [k for k in MANIFEST_KEYS if k not in frame.columns]
    if absent:
        raise ValueError(f"{path}: the manifest lacks the columns {absent} (needs {list(MANIFEST_KEYS)})")
    usable, problems = [], []
    for index, row in frame.iterrows():
        image = Path(str(row["image"]))
        image = image if image.is_absolute() else path.parent / image
        if not image.is_file():
            problems.append(ManifestProblem(int(index), str(image), "missing file"))
            continue
        try:
            with Image.open(image) as handle:
                handle.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            problems.append(ManifestProblem(int(index), str(image), f"unreadable image ({type(error).__name__})"))
            continue
        usable.append({**row.to_dict(), "image": str(image)})
    duplicated = pd.DataFrame(usable).duplicated(["group_id", "task", "prompt_kind"], keep="first") if usable else []
    kept = [row for row, dup in zip(usable, duplicated, strict=True) if not dup]
    problems += [
        ManifestProblem(-1, row["image"], "duplicate group/task/prompt kind (first one kept)")
        for row, dup in zip(usable, duplicated, strict=True)
        if dup
    ]
    return pd.DataFrame(kept, columns=list(frame.columns)), problems
