"""The evaluation protocol for one model version: every benchmark group x both tasks x static
and dynamic prompts, generated with fixed inference settings (one seed per group and task, the
same for every model), scored per image, each row carrying its lineage."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import pandas as pd

from evaluation.benchmark import ImageScores, image_scores
from idglow.generation import JOB_COLUMNS, GenerationSettings, generate_candidates
from idglow.scoring import ImageScorer

BENCHMARK_ROUND = "benchmark"  # seeds depend on the group, task and prompt, never on the model


def benchmark_jobs(prompts: pd.DataFrame) -> pd.DataFrame:
    """The benchmark groups' prompts (both tasks, static and dynamic) as generation jobs."""
    bench = prompts[prompts["group_kind"] == "bench"]
    if bench.empty:
        raise ValueError("the prompts table holds no benchmark prompts (group_kind 'bench')")
    return bench.assign(job_id=bench["prompt_id"], photo_id="")[list(JOB_COLUMNS)].reset_index(drop=True)


def evaluate_model(
    pipeline,
    scorer: ImageScorer,
    jobs: pd.DataFrame,
    settings: GenerationSettings,
    out_dir: Path,
    model_version: str,
    lineage: dict,
    progress: bool = True,
) -> pd.DataFrame:
    """Generate (images already written are kept) and score; one row per image with the metrics,
    the inference settings and ``lineage`` (checkpoint, shards, prompts, metric models, code)."""
    settings = replace(settings, candidates_per_job=1)
    images, _ = generate_candidates(pipeline, jobs, settings, out_dir, BENCHMARK_ROUND, model_version, progress)
    scored = image_scores(scorer, list(images["path"]), list(images["condition_paths"]), list(images["prompt"]))
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
                "inference": json.dumps(asdict(settings)),
                **lineage,
            }
        )
    return pd.DataFrame(rows)


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
