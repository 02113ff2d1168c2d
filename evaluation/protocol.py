"""The evaluation protocol for one model version: every benchmark group x both tasks x static
and dynamic prompts, generated with fixed inference settings (one seed per group and task, the
same for every model), scored per image, each row carrying its lineage. The generation and the
scoring are stages on the engine (``assets.benchmark.evaluate_on_ray``); this module says what
is generated and what a result row holds."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from functools import partial

import pandas as pd

from evaluation.benchmark import ImageScores, image_scores
from idglow.generation import JOB_COLUMNS, GenerationSettings
from idglow.scoring import ImageScorer

BENCHMARK_ROUND = "benchmark"  # seeds depend on the group, task and prompt, never on the model
LINEAGE_COLUMNS = ("checkpoint_sha256", "shard_manifest_sha256", "prompt_set_sha256", "metric_models", "code_version")
PROTOCOL_COLUMNS = (
    "model_version",
    "group_id",
    "task",
    "prompt_kind",
    "n_subjects",
    "image",
    "seed",
    *(f.name for f in fields(ImageScores)),
    "inference",
    *LINEAGE_COLUMNS,
)


def benchmark_jobs(prompts: pd.DataFrame) -> pd.DataFrame:
    """The benchmark groups' prompts (both tasks, static and dynamic) as generation jobs."""
    bench = prompts[prompts["group_kind"] == "bench"]
    if bench.empty:
        raise ValueError("the prompts table holds no benchmark prompts (group_kind 'bench')")
    return bench.assign(job_id=bench["prompt_id"], photo_id="")[list(JOB_COLUMNS)].reset_index(drop=True)


def protocol_frame(
    images: pd.DataFrame,
    scored: list[ImageScores],
    settings: GenerationSettings,
    model_version: str,
    lineage: dict,
) -> pd.DataFrame:
    """The protocol's table of one model version: a row per generated image (``images``: the
    candidate table, one candidate per job) with its metrics (``scored``, in the images' order),
    the inference settings and ``lineage`` (checkpoint, shards, prompts, metric models, code)."""
    rows = []
    for row, scores in zip(images.itertuples(), scored, strict=True):
        rows.append(
            {
                "model_version": model_version,
                "group_id": row.group_id,
                "task": row.task,
                "prompt_kind": row.prompt_kind,
                "n_subjects": row.n_subjects,
                "image": row.path,
                "seed": row.seed,
                **scores.__dict__,
                "inference": json.dumps(asdict(replace(settings, candidates_per_job=1))),
                **lineage,
            }
        )
    return pd.DataFrame(rows, columns=PROTOCOL_COLUMNS)


def score_external(
    scorer: ImageScorer | None,
    manifest: pd.DataFrame,
    prompts: pd.DataFrame,
    method: str,
    score: Callable[[list[str], list[list[str]], list[str]], list[ImageScores]] | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Score images made elsewhere with the same metrics: each manifest row names a benchmark
    group, task and prompt kind, whose portraits and prompt come from the prompts table. Rows
    naming no benchmark prompt are returned as problems. ``score`` (images, their portraits, their
    prompts) computes the metrics, by default ``image_scores`` with ``scorer`` in this process;
    ``idglow eval external`` passes the engine's stage (``idglow.inference.scores.image_scores_on_ray``)."""
    bench = prompts[prompts["group_kind"] == "bench"].set_index(["group_id", "task", "prompt_kind"])
    known, problems = [], []
    for row in manifest.itertuples():
        key = (row.group_id, row.task, row.prompt_kind)
        if key not in bench.index:
            problems.append(f"{row.image}: no benchmark prompt for group {row.group_id}, {row.task}, {row.prompt_kind}")
            continue
        known.append((row, bench.loc[key]))
    if score is None:
        score = partial(image_scores, scorer)
    scored = score(
        [row.image for row, _ in known],
        [list(prompt["condition_paths"]) for _, prompt in known],
        [prompt["prompt"] for _, prompt in known],
    )
    rows = []
    for (row, prompt), scores in zip(known, scored, strict=True):
        rows.append(
            {
                "model_version": method,
                "group_id": row.group_id,
                "task": row.task,
                "prompt_kind": row.prompt_kind,
                "n_subjects": int(prompt["n_subjects"]),
                "image": row.image,
                "seed": -1,
                **scores.__dict__,
                "inference": json.dumps({"external": True}),
                "checkpoint_sha256": "",
                "shard_manifest_sha256": "",
                "prompt_set_sha256": "",
                "metric_models": "",
                "code_version": "",
            }
        )
    return pd.DataFrame(rows), problems
