"""The candidate_images stage on the engine: one work item per candidate (a job's K candidates in
one batch, so the job's prompt and references are encoded once), each actor holding one generator
pipeline and the face pack, writing each PNG atomically and counting its faces.

The images equal ``idglow.generation.generate_candidates``'s: the same seeds (``job_seed``), the
same ``edit_candidates`` call per job over its missing candidates, the same completeness check
(``is_complete_image``), so a truncated file is generated again with its recorded seed."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import torch
from PIL import Image

from idglow.acceleration import apply_acceleration
from idglow.editing import edit_candidates
from idglow.faces import count_faces
from idglow.generation import (
    CANDIDATE_COLUMNS,
    GenerationSettings,
    candidate_name,
    candidate_record,
    is_complete_image,
    job_seed,
)
from idglow.inference.engine import ITEM_ID, OUTPUT_PATH, Replica
from idglow.models.hub import ModelHub
from idglow.paths import TableRoots


def candidate_table(
    jobs: pd.DataFrame, settings: GenerationSettings, out_dir: str, round_name: str, model_version: str
) -> pd.DataFrame:
    """The candidates of ``jobs`` (stored paths) in ``out_dir`` (storage-relative), one row per
    (job, k) with its seed: the table ``generate_candidates`` returns, in stored form."""
    records = [
        candidate_record(
            job,
            k,
            round_name,
            f"{out_dir}/{candidate_name(job.job_id, k, settings, model_version)}",
            job_seed(job.job_id, k, round_name, settings.seed),
            model_version,
        )
        for job in jobs.itertuples()
        for k in range(settings.candidates_per_job)
    ]
    return pd.DataFrame(records, columns=list(CANDIDATE_COLUMNS))


def candidate_items(table: pd.DataFrame) -> pa.Table:
    """The engine's work items for a candidate table: what the replica reads, by candidate."""
    columns = ["job_id", "k", "seed", "prompt", "condition_paths", "n_subjects"]
    job_seeds = table.groupby("job_id", sort=False)["seed"].apply(list)  # by k: a redone group's seeds
    items = table[columns].assign(
        **{ITEM_ID: table["candidate_id"], OUTPUT_PATH: table["path"], "job_seeds": table["job_id"].map(job_seeds)}
    )
    return pa.Table.from_pandas(items[[ITEM_ID, OUTPUT_PATH, *columns, "job_seeds"]], preserve_index=False)


@dataclass(frozen=True)
class HubSpec:
    """What an actor needs to build its own ``ModelHub``: plain values, not the Dagster resource.
    ``device`` unset: CUDA where the actor has a GPU."""

    profile: str
    models_dir: str
    device: str | None = None
    seed: int = 0
    clip_sha256: str | None = None

    @classmethod
    def of(cls, hub: ModelHub, device: str | None) -> HubSpec:
        return cls(hub.profile, str(hub.models_dir), device, hub.seed, hub.clip_sha256)

    def hub(self) -> ModelHub:
        return ModelHub(
            self.profile, Path(self.models_dir), device=self.device, seed=self.seed, clip_sha256=self.clip_sha256
        )


@dataclass(frozen=True)
class CandidateReplicaFactory:
    hub: HubSpec
    settings: GenerationSettings
    roots: TableRoots  # the condition portraits' roots (storage and dataset), mounted alike on every node
    lora_dir: str | None = None  # a LoRA folder to load on the generator, or the base model
    count_faces: bool = True
    candidates_batch: int = 4  # generate_candidates' fixed groups by k, denoised together

    def __call__(self) -> CandidateReplica:
        return CandidateReplica(self)


class CandidateReplica(Replica):
    def __init__(self, factory: CandidateReplicaFactory):
        self.factory = factory
        hub = factory.hub.hub()
        self.pipeline = hub.generator()
        if factory.lora_dir:  # this actor's own pipeline: it keeps the adapter until the actor ends
            self.pipeline.load_lora_weights(Path(factory.lora_dir))
        apply_acceleration(self.pipeline, factory.settings.acceleration)  # after the LoRA; nothing when all off
        self.faces = hub.face_analysis() if factory.count_faces else None

    def run(self, items: list[dict[str, Any]]) -> list[Image.Image]:
        """As ``generate_candidates``: a job's candidates are denoised in fixed groups by k, and a
        group holding a missing one is redone whole (a row may round differently in another
        batch), so a regenerated candidate is byte for byte what an uninterrupted run wrote."""
        settings, batch, images = self.factory.settings, self.factory.candidates_batch, []
        steps, true_cfg_scale = settings.sampling
        for _, group in itertools.groupby(items, key=lambda item: item["job_id"]):
            group = list(group)  # one job's missing candidates: its encoding is shared
            first, missing = group[0], [int(item["k"]) for item in group]
            seeds, redone = first["job_seeds"], {k // batch for k in missing}
            redo = [k for k in range(len(seeds)) if k // batch in redone]
            references = [Image.open(self.factory.roots.resolve(p)).convert("RGB") for p in first["condition_paths"]]
            made = edit_candidates(
                self.pipeline,
                references,
                first["prompt"],
                budget=settings.budget,
                height=settings.height,
                width=settings.width,
                num_inference_steps=steps,
                true_cfg_scale=true_cfg_scale,
                negative_prompt=" " if true_cfg_scale > 1 else None,
                generators=[torch.Generator(device="cpu").manual_seed(seeds[k]) for k in redo],
                candidates_batch=batch,
            )
            by_k = dict(zip(redo, made, strict=True))
            images += [by_k[k] for k in missing]  # only the missing ones are written
        return images

    def write(self, output: Image.Image, path: Path) -> None:
        output.save(path, format="PNG")

    def is_complete(self, path: Path) -> bool:
        return is_complete_image(path)

    def describe(self, item: dict[str, Any], path: Path) -> dict[str, Any]:
        if self.faces is None:
            return {}
        with Image.open(path) as image:
            return {"faces_found": min(count_faces(self.faces, image), int(item["n_subjects"]))}
