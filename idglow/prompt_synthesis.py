"""Dynamic prompts from the prompt model (section 3.2), validated, with static fallback."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from idglow.data.groups import TASKS
from idglow.editing import reference_dimensions
from idglow.prompts import (
    badcase_for,
    barren_prompt,
    descriptive_prompt,
    dynamic_instruction,
    static_prompt,
    validate_dynamic_prompt,
)

PROMPT_COLUMNS = (
    "prompt_id",
    "group_id",
    "group_kind",
    "task",
    "prompt_kind",
    "prompt",
    "n_subjects",
    "identities",
    "condition_paths",
    "fallback",
    "fallback_reason",
    "prompt_model_version",
    "raw_output",
)


def prompt_portrait(image: Image.Image, pixels: int) -> Image.Image:
    """``image`` resized to about ``pixels`` pixels at its aspect ratio, as the prompt model sees a
    portrait both when it writes prompts and when it is aligned (training.prompt_dpo)."""
    size = reference_dimensions(image.width, image.height, pixels)
    return image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)


@torch.no_grad()
def write_dynamic_prompt(model, processor, portraits: list[Image.Image], task: str, max_new_tokens: int = 160) -> str:
    messages = [
        {
            "role": "user",
            "content": [
                *({"type": "image"} for _ in portraits),
                {"type": "text", "text": dynamic_instruction(task, len(portraits))},
            ],
        }
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[text], images=portraits, return_tensors="pt").to(model.device)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0].strip()


def build_prompts(
    groups: pd.DataFrame,
    source_root: Path,
    prompt_model,
    token_counter,
    token_budget: int,
    prompt_model_version: str,
    portrait_pixels: int,
    max_new_tokens: int = 160,
    dynamic: bool = True,
    progress: bool = True,
    written: Mapping[tuple[str, str], str] | None = None,
) -> pd.DataFrame:
    """One static and one dynamic prompt per (group, task); a failed dynamic prompt falls back.
    ``written``: the prompt model's raw outputs by (group_id, task), when they were written
    elsewhere (the Ray stage, ``idglow.inference.prompts``); the model is not called then."""
    rows = []
    for group in tqdm(list(groups.itertuples()), desc="writing prompts", disable=not progress):
        paths = [str(source_root / p) for p in group.condition_paths]
        load = dynamic and written is None
        portraits = [prompt_portrait(Image.open(p).convert("RGB"), portrait_pixels) for p in paths] if load else []
        for task in TASKS:
            static = static_prompt(task, group.n_subjects)
            base = {
                "group_id": group.group_id,
                "group_kind": group.kind,
                "task": task,
                "n_subjects": int(group.n_subjects),
                "identities": [int(i) for i in group.identities],
                "condition_paths": paths,
                "prompt_model_version": prompt_model_version,
            }
            rows.append(
                {
                    **base,
                    "prompt_id": f"{group.group_id}-{task}-static",
                    "prompt_kind": "static",
                    "prompt": static,
                    "fallback": False,
                    "fallback_reason": "",
                    "raw_output": "",
                }
            )
            if dynamic:
                if written is not None:
                    raw = written[(group.group_id, task)]
                else:
                    model, processor = prompt_model
                    raw = write_dynamic_prompt(model, processor, portraits, task, max_new_tokens)
                check = validate_dynamic_prompt(raw, task, group.n_subjects, token_counter(raw), token_budget)
            else:
                raw, check = "", None
            rows.append(
                {
                    **base,
                    "prompt_id": f"{group.group_id}-{task}-dynamic",
                    "prompt_kind": "dynamic",
                    "prompt": raw if check and check.ok else static,
                    "fallback": not (check and check.ok),
                    "fallback_reason": "dynamic prompts disabled" if check is None else check.reason,
                    "raw_output": raw,
                }
            )
    return pd.DataFrame(rows, columns=list(PROMPT_COLUMNS))


def build_prompt_preferences(groups: pd.DataFrame, catalog: pd.DataFrame) -> pd.DataFrame:
    """For each training group and task: a barren prompt (rejected) and a descriptive,
    attribute-bound prompt (chosen), with the badcase category the pair targets."""
    attributes = catalog.set_index("hq_idx")
    rows = []
    for index, group in enumerate(groups.itertuples()):
        people = [attributes.loc[int(hq)].to_dict() for hq in group.condition_hq_idx]
        for task in TASKS:
            rows.append(
                {
                    "group_id": group.group_id,
                    "task": task,
                    "n_subjects": int(group.n_subjects),
                    "condition_hq_idx": [int(h) for h in group.condition_hq_idx],
                    "chosen": descriptive_prompt(task, people),
                    "rejected": barren_prompt(group.n_subjects),
                    "badcase": badcase_for(people, index),
                }
            )
    return pd.DataFrame(rows)
