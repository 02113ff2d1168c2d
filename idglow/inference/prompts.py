"""The prompts stage's dynamic prompts on the engine: one work item per (group, task), each actor
holding one prompt model (the base weights or an aligned version), writing the model's raw output
as a small JSON file. ``build_prompts(..., written=raw_outputs(result))`` then validates them and
builds the same table as when it calls the model itself (greedy decoding: the same text)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from PIL import Image

from idglow.data.groups import TASKS
from idglow.inference.candidates import HubSpec
from idglow.inference.engine import ITEM_ID, OUTPUT_PATH, Replica, StageResult, output_path
from idglow.prompt_synthesis import prompt_portrait, write_dynamic_prompt

STAGE = "prompts"


def prompt_items(groups: pd.DataFrame, settings: dict[str, Any]) -> pa.Table:
    """One item per (group, task) with its portraits (relative to the dataset's source root);
    the output path depends on the item and on ``settings`` (the prompt model's version, the
    portrait size, the token limit), so another model writes elsewhere."""
    rows = []
    for group in groups.itertuples():
        for task in TASKS:
            item_id = f"{group.group_id}-{task}"
            rows.append(
                {
                    ITEM_ID: item_id,
                    OUTPUT_PATH: output_path(STAGE, item_id, settings, ".json"),
                    "group_id": group.group_id,
                    "task": task,
                    "condition_paths": [str(p) for p in group.condition_paths],
                }
            )
    return pa.Table.from_pylist(rows)


def raw_outputs(result: StageResult) -> dict[tuple[str, str], str]:
    """The raw outputs by (group_id, task), for ``build_prompts(written=...)``."""
    if not result.table.num_rows:
        return {}
    rows = result.table.select(["group_id", "task", "raw_output"]).to_pylist()
    return {(row["group_id"], row["task"]): row["raw_output"] for row in rows}


@dataclass(frozen=True)
class PromptReplicaFactory:
    hub: HubSpec
    source_root: str  # the portraits' root (the CelebA-HQ source), mounted alike on every node
    portrait_pixels: int
    max_new_tokens: int
    aligned: str | None = None  # an aligned prompt model folder, or the base weights

    def __call__(self) -> PromptReplica:
        return PromptReplica(self)


class PromptReplica(Replica):
    def __init__(self, factory: PromptReplicaFactory):
        self.factory = factory
        self.model, self.processor = factory.hub.hub().prompt_model(Path(factory.aligned) if factory.aligned else None)

    def run(self, items: list[dict[str, Any]]) -> list[str]:
        root, pixels = Path(self.factory.source_root), self.factory.portrait_pixels
        outputs = []
        for item in items:
            portraits = [prompt_portrait(Image.open(root / p).convert("RGB"), pixels) for p in item["condition_paths"]]
            raw = write_dynamic_prompt(self.model, self.processor, portraits, item["task"], self.factory.max_new_tokens)
            outputs.append(raw)
        return outputs

    def write(self, output: str, path: Path) -> None:
        path.write_text(json.dumps({"raw_output": output}))

    def is_complete(self, path: Path) -> bool:
        try:
            return "raw_output" in json.loads(path.read_text())
        except (OSError, ValueError):
            return False

    def describe(self, item: dict[str, Any], path: Path) -> dict[str, Any]:
        return {"group_id": item["group_id"], "task": item["task"], **json.loads(path.read_text())}
