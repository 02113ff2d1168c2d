"""The pair_scores stage on the engine: one work item per preference pair, each actor holding one
``ImageScorer`` (face pack, CLIP, aesthetic MLP) and scoring its batch's pairs with
``score_pairs`` (each image and portrait of the batch analysed once), one JSON row per pair.

The rows equal ``score_pairs`` over the whole table up to float rounding: CLIP and the face pack
run the same images in other batch compositions."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from idglow.inference.candidates import HubSpec
from idglow.inference.engine import ITEM_ID, OUTPUT_PATH, RESULT_COLUMNS, Replica, StageResult, output_path
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
