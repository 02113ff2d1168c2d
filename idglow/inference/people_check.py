"""The VLM check of stage 1 on the engine (``idglow.people_check``): one work item per chosen
image (the same stored image chosen in several pairs is asked once), each actor holding one
prompt model, writing its raw answer and the count read from it as a small JSON file."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from PIL import Image

from idglow.inference.candidates import HubSpec
from idglow.inference.engine import ITEM_ID, OUTPUT_PATH, Replica, StageResult, output_path
from idglow.paths import TableRoots
from idglow.people_check import answer_people_question, parse_people_count

STAGE = "people_check"


def people_check_items(pairs: pd.DataFrame, settings: dict[str, Any]) -> pa.Table:
    """One item per distinct stored chosen image of ``pairs``; its output depends on the image's
    stored path and on ``settings`` (the prompt model's fingerprint, the pixels it sees)."""
    images = sorted(set(pairs["chosen_path"]))
    ids = [hashlib.sha256(image.encode()).hexdigest()[:24] for image in images]
    return pa.table(
        {
            ITEM_ID: ids,
            OUTPUT_PATH: [output_path(STAGE, i, settings, ".json") for i in ids],
            "chosen_path": images,
        }
    )


def people_counts(result: StageResult) -> pd.DataFrame:
    """``chosen_path``, ``vlm_answer`` and ``vlm_people`` (nullable) of each asked image."""
    if not result.table.num_rows:
        return pd.DataFrame(
            {
                "chosen_path": pd.Series(dtype=str),
                "vlm_answer": pd.Series(dtype=str),
                "vlm_people": pd.Series(dtype="Int64"),
            }
        )
    frame = result.table.select(["chosen_path", "vlm_answer", "vlm_people"]).to_pandas()
    frame["vlm_people"] = frame["vlm_people"].astype("Int64")
    return frame


@dataclass(frozen=True)
class PeopleCheckReplicaFactory:
    hub: HubSpec
    roots: TableRoots  # what the stored chosen paths resolve against, mounted alike on every node
    pixels: int  # the profile's people_check_pixels

    def __call__(self) -> PeopleCheckReplica:
        return PeopleCheckReplica(self)


class PeopleCheckReplica(Replica):
    def __init__(self, factory: PeopleCheckReplicaFactory):
        self.factory = factory
        self.model, self.processor = factory.hub.hub().prompt_model()

    def run(self, items: list[dict[str, Any]]) -> list[str]:
        answers = []
        for item in items:
            image = Image.open(self.factory.roots.resolve(item["chosen_path"])).convert("RGB")
            answers.append(answer_people_question(self.model, self.processor, image, self.factory.pixels))
        return answers

    def write(self, output: str, path: Path) -> None:
        path.write_text(json.dumps({"vlm_answer": output, "vlm_people": parse_people_count(output)}))

    def is_complete(self, path: Path) -> bool:
        try:
            return "vlm_answer" in json.loads(path.read_text())
        except (OSError, ValueError):
            return False

    def describe(self, item: dict[str, Any], path: Path) -> dict[str, Any]:
        return {"chosen_path": item["chosen_path"], **json.loads(path.read_text())}
