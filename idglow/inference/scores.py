"""The pair_scores stage on the engine: one work item per preference pair, each actor holding one
``ImageScorer`` (face pack, CLIP, aesthetic MLP) and scoring its batch's pairs with
``score_pairs`` (each image and portrait of the batch analysed once), one JSON row per pair.

The rows equal ``score_pairs`` over the whole table up to float rounding: CLIP and the face pack
run the same images in other batch compositions."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from idglow.inference.candidates import HubSpec
from idglow.inference.engine import (
    ITEM_ID,
    OUTPUT_PATH,
    RESULT_COLUMNS,
    RayOptions,
    Replica,
    StageResult,
    output_path,
    run_stage,
)
from idglow.models.hub import ModelHub
from idglow.paths import TableRoots
from idglow.scoring import ImageScorer, score_pairs

STAGE = "pair_scores"
PAIR_COLUMNS = ("pair_id", "chosen_path", "rejected_path", "condition_paths", "prompt")


def pair_items(pairs: pd.DataFrame, settings: dict[str, Any]) -> pa.Table:
    """One item per pair (stored paths); its output depends on the pair and on ``settings`` (the
    scoring models' fingerprints)."""
    items = pairs[list(PAIR_COLUMNS)].assign(
        **{
            ITEM_ID: pairs["pair_id"],
            OUTPUT_PATH: [output_path(STAGE, p, settings, ".json") for p in pairs["pair_id"]],
        }
    )
    items["condition_paths"] = items["condition_paths"].map(list)
    return pa.Table.from_pandas(items[[ITEM_ID, OUTPUT_PATH, *PAIR_COLUMNS]], preserve_index=False)


def scores_frame(result: StageResult, pairs: pd.DataFrame) -> pd.DataFrame:
    """``score_pairs``' table of ``pairs`` from the stage's results (the pairs' order)."""
    if not result.table.num_rows:  # no pairs: score_pairs' empty table (no model runs for it)
        return score_pairs(ImageScorer(None, progress=False), pairs.iloc[:0][list(PAIR_COLUMNS)])
    return result.table.drop_columns(list(RESULT_COLUMNS)).to_pandas()


@dataclass(frozen=True)
class ScoreReplicaFactory:
    hub: HubSpec
    roots: TableRoots  # what the pairs' stored paths resolve against, mounted alike on every node
    batch_size: int = 64

    def __call__(self) -> ScoreReplica:
        return ScoreReplica(self)


class ScoreReplica(Replica):
    def __init__(self, factory: ScoreReplicaFactory):
        self.factory = factory
        hub = factory.hub.hub()
        hub.face_analysis(), hub.clip(), hub.aesthetic()  # loaded once, before the first batch
        self.scorer = ImageScorer(hub, batch_size=factory.batch_size, progress=False)

    def run(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        pairs = self.factory.roots.resolve_frame(pd.DataFrame(items)[list(PAIR_COLUMNS)])
        return score_pairs(self.scorer, pairs).to_dict("records")

    def write(self, output: dict[str, Any], path: Path) -> None:
        path.write_text(json.dumps({key: _plain(value) for key, value in output.items()}))

    def is_complete(self, path: Path) -> bool:
        try:
            return "pair_id" in json.loads(path.read_text())
        except (OSError, ValueError):
            return False

    def describe(self, item: dict[str, Any], path: Path) -> dict[str, Any]:
        return json.loads(path.read_text())


def _plain(value):
    """numpy scalars as Python numbers (JSON keeps every float64 exactly, NaN included)."""
    if hasattr(value, "item"):
        value = value.item()
    return float("nan") if isinstance(value, float) and math.isnan(value) else value


# ------------------------------------------------------------------ image scores (eval external)

IMAGE_STAGE = "image_scores"


def image_id(roots: TableRoots, image: str, condition_paths: list[str], prompt: str) -> str:
    """An image item's id: the stored image's content hash with its portraits and prompt, so an
    output is never reused for another image stored under the same name."""
    from idglow.storage import sha256_file

    key = [sha256_file(roots.resolve(image)), list(condition_paths), prompt]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]


def image_items(
    images: list[str], condition_paths: list[list[str]], prompts: list[str], settings, roots: TableRoots
) -> pa.Table:
    """One item per image to score against its portraits and prompt (paths stored under
    ``roots``; the same image, portraits and prompt given twice are one item); its output also
    depends on ``settings`` (the scorers' fingerprints)."""
    ids = [image_id(roots, *key) for key in zip(images, condition_paths, prompts, strict=True)]
    first = sorted({item: i for i, item in reversed(list(enumerate(ids)))}.values())
    return pa.table(
        {
            ITEM_ID: [ids[i] for i in first],
            OUTPUT_PATH: [output_path(IMAGE_STAGE, ids[i], settings, ".json") for i in first],
            "image": [images[i] for i in first],
            "condition_paths": pa.array([list(condition_paths[i]) for i in first], pa.list_(pa.string())),
            "prompt": [prompts[i] for i in first],
        }
    )


@dataclass(frozen=True)
class ImageScoreReplicaFactory:
    """``evaluation.benchmark.image_scores`` in each actor: one ImageScorer, a batch's images
    scored together (each portrait analysed once), one JSON row per image."""

    hub: HubSpec
    roots: TableRoots  # what the stored paths resolve against, mounted alike on every node
    batch_size: int = 64

    def __call__(self) -> ImageScoreReplica:
        return ImageScoreReplica(self)


class ImageScoreReplica(ScoreReplica):
    def run(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from evaluation.benchmark import image_scores

        frame = self.factory.roots.resolve_frame(pd.DataFrame(items), ("image", "condition_paths"))
        scored = image_scores(self.scorer, list(frame["image"]), list(frame["condition_paths"]), list(frame["prompt"]))
        return [{ITEM_ID: item[ITEM_ID], **asdict(scores)} for item, scores in zip(items, scored, strict=True)]

    def is_complete(self, path: Path) -> bool:
        try:
            return ITEM_ID in json.loads(path.read_text())
        except (OSError, ValueError):
            return False

    def describe(self, item: dict[str, Any], path: Path) -> dict[str, Any]:
        return {k: v for k, v in json.loads(path.read_text()).items() if k != ITEM_ID}


@dataclass(frozen=True)
class ImageScoreStage:
    """The image-score stage for some images: its work items, its replicas, and how to read the
    ``ImageScores`` of every image (in the images' order) back from the stage's result."""

    items: pa.Table
    replica_factory: ImageScoreReplicaFactory
    ids: list[str]  # each image's item id, in the images' order (repeats share one item)

    def scores(self, result: StageResult) -> list:
        from evaluation.benchmark import ImageScores

        if not self.ids:
            return []
        columns = [f.name for f in fields(ImageScores)]
        by_id = {row[ITEM_ID]: row for row in result.table.select([ITEM_ID, *columns]).to_pylist()}
        return [ImageScores(**{c: by_id[i][c] for c in columns}) for i in self.ids]


def scorer_fingerprints(hub: ModelHub) -> dict[str, str]:
    """The scoring models' short fingerprints (face pack, CLIP, aesthetic MLP), over their files'
    content: what an image's scores depend on besides the image, its portraits and prompt."""
    from idglow.models.registry import AESTHETIC, CLIP, FACE_PACK, component_fingerprint

    return {
        role: component_fingerprint(hub.profile, role, hub.models_dir)[:16] for role in (FACE_PACK, CLIP, AESTHETIC)
    }


def image_score_stage(
    hub: ModelHub,
    roots: TableRoots,
    images: list[str],
    condition_paths: list[list[str]],
    prompts: list[str],
    *,
    device: str | None = None,
    batch_size: int = 64,
    fingerprints: dict[str, str] | None = None,
) -> ImageScoreStage:
    """``evaluation.benchmark.image_scores`` of these images (files under ``roots``, absolute or
    stored) as a stage on the engine; its outputs depend on the scoring models' fingerprints
    (``scorer_fingerprints``, computed here unless the caller has them: each hashes the models' files)."""
    settings = {"profile": hub.profile, **(fingerprints or scorer_fingerprints(hub))}
    stored = [roots.store(image) for image in images]
    conditions = [[roots.store(p) for p in paths] for paths in condition_paths]
    return ImageScoreStage(
        image_items(stored, conditions, prompts, settings, roots),
        ImageScoreReplicaFactory(HubSpec.of(hub, device), roots, batch_size),
        [image_id(roots, *key) for key in zip(stored, conditions, prompts, strict=True)],
    )


def image_scores_on_ray(
    hub: ModelHub,
    roots: TableRoots,
    images: list[str],
    condition_paths: list[list[str]],
    prompts: list[str],
    *,
    options: RayOptions = RayOptions(),
    device: str | None = None,
    batch_size: int = 64,
    logger: Any = None,
) -> list:
    """``evaluation.benchmark.image_scores`` of these images run in this process on the Ray
    ``options`` names: ``ImageScores`` in their order, equal to the plain call up to float
    rounding (CLIP and the face pack see other batch compositions)."""
    stage = image_score_stage(hub, roots, images, condition_paths, prompts, device=device, batch_size=batch_size)
    result = run_stage(
        stage.items,
        stage.replica_factory,
        roots.storage,
        stage=IMAGE_STAGE,
        options=options,
        batch_size=batch_size,
        logger=logger,
    )
    return stage.scores(result)
