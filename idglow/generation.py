"""Candidate group photos from a named model version, K per job, resumable within a round.

A rerun keeps an existing candidate only if it is a complete, readable image (a file
truncated by a crash, a full disk or a copy is generated again, with its recorded seed, so it
comes out as it would have); stale partial files of a killed run are removed first."""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from idglow.acceleration import Acceleration, apply_acceleration
from idglow.editing import ReferenceBudget, edit_candidates
from idglow.inference.engine import settings_hash
from idglow.storage import atomic_path, remove_stale_partials

# A generation job: one prompt (or one real photo's caption) for one group; K candidates each.
JOB_COLUMNS = (
    "job_id",
    "group_id",
    "task",
    "prompt_kind",
    "prompt",
    "condition_paths",
    "identities",
    "n_subjects",
    "photo_id",
)
CANDIDATE_COLUMNS = ("candidate_id", "job_id", "round", "path", "seed", "k", "model_version", *JOB_COLUMNS[1:])


@dataclass(frozen=True)
class GenerationSettings:
    """Inference settings recorded with every candidate. ``budget`` is the profile's reference
    budgets (``reference_pixels``, ``condition_pixels``), the ones training encodes with;
    ``acceleration`` the lossy options (idglow.acceleration, all off by default), part of the
    recorded settings and their hash, so an accelerated image is never taken for a lossless one."""

    height: int
    width: int
    steps: int
    true_cfg_scale: float
    candidates_per_job: int
    seed: int
    budget: ReferenceBudget
    acceleration: Acceleration = Acceleration()

    @property
    def sampling(self) -> tuple[int, float]:
        """The (steps, true-CFG scale) the images are sampled with: ``steps`` and
        ``true_cfg_scale``, unless the distilled LoRA is on (``Acceleration.sampling``)."""
        return self.acceleration.sampling(self.steps, self.true_cfg_scale)


def job_seed(job_id: str, k: int, round_name: str, seed: int) -> int:
    """A stable seed per (job, candidate, round): reruns reproduce, rounds differ."""
    digest = hashlib.sha256(f"{seed}|{round_name}|{job_id}|{k}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def candidate_folder(settings: GenerationSettings, model_version: str) -> str:
    """The sub-folder, under a round's folder, of the candidates made with ``settings`` by
    ``model_version``: a hash of both, leaving out K (candidate k is the same image however many a
    job has). A changed setting or model writes new files, never takes the old ones for its own."""
    return settings_hash({**asdict(replace(settings, candidates_per_job=0)), "model_version": model_version})


def candidate_name(job_id: str, k: int, settings: GenerationSettings, model_version: str) -> str:
    """Candidate ``k`` of job ``job_id``'s path relative to its round's folder."""
    return f"{candidate_folder(settings, model_version)}/{job_id}-k{k}.png"


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk with its CRC


def candidate_record(job, k: int, round_name: str, path: str, seed: int, model_version: str) -> dict:
    """One row of the candidate table (``CANDIDATE_COLUMNS``): candidate ``k`` of ``job``."""
    return {
        "candidate_id": f"{job.job_id}-k{k}",
        "job_id": job.job_id,
        "round": round_name,
        "path": path,
        "seed": seed,
        "k": k,
        "model_version": model_version,
        "group_id": job.group_id,
        "task": job.task,
        "prompt_kind": job.prompt_kind,
        "prompt": job.prompt,
        "condition_paths": list(job.condition_paths),
        "identities": list(job.identities),
        "n_subjects": int(job.n_subjects),
        "photo_id": job.photo_id,
    }


def is_complete_image(path: Path) -> bool:
    """Whether ``path`` is a readable image whose data decodes to the end (a truncated PNG
    still opens: it fails only when its chunks are checked or its pixels loaded; PIL does not
    check the final chunk's CRC, so a PNG must also end with the whole IEND chunk)."""
    with open(path, "rb") as handle:
        head = handle.read(len(_PNG_SIGNATURE))
        handle.seek(max(0, os.fstat(handle.fileno()).st_size - len(_PNG_END)))
        if head == _PNG_SIGNATURE and handle.read() != _PNG_END:
            return False
    try:
        with Image.open(path) as image:
            image.verify()  # chunk CRCs and the end marker, for PNG
        with Image.open(path) as image:
            image.load()
        return True
    except (OSError, SyntaxError, ValueError):  # PIL raises these for truncated or corrupt files
        return False


def generate_candidates(
    pipeline,
    jobs: pd.DataFrame,
    settings: GenerationSettings,
    out_dir: Path,
    round_name: str,
    model_version: str,
    progress: bool = True,
    candidates_batch: int = 4,
) -> tuple[pd.DataFrame, int]:
    """Generate K candidates per job into ``out_dir`` (its ``candidate_folder`` for these settings
    and this model); complete files already there are kept (a rerun skips them, and regenerates
    truncated or unreadable ones). Returns the candidate table and how many images were generated
    now.

    Up to ``candidates_batch`` candidates of a job are denoised together, in fixed groups by k
    (0..B-1, B..2B-1, ...). A rerun denoises every group holding a missing candidate whole and
    writes only the missing ones: a batched matrix product may round a row differently in
    another batch, so a regenerated candidate is byte for byte what an uninterrupted run wrote
    only if its batch is the same.

    ``settings.acceleration`` is applied to ``pipeline`` first (``apply_acceleration``: nothing
    when all is off, once per pipeline; a pipeline carrying other options is refused)."""
    apply_acceleration(pipeline, settings.acceleration)
    steps, true_cfg_scale = settings.sampling
    records, generated = [], 0
    folder = out_dir / candidate_folder(settings, model_version)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(folder)
    total = len(jobs) * settings.candidates_per_job
    bar = tqdm(total=total, desc=f"generating {round_name}", unit="img", disable=not progress)
    for job in jobs.itertuples():
        seeds = [job_seed(job.job_id, k, round_name, settings.seed) for k in range(settings.candidates_per_job)]
        paths = [
            out_dir / candidate_name(job.job_id, k, settings, model_version) for k in range(settings.candidates_per_job)
        ]
        missing = [k for k, path in enumerate(paths) if not (path.exists() and is_complete_image(path))]
        groups = {k // candidates_batch for k in missing}
        # every group but the job's last is full, so edit_candidates splits ``redo`` into these groups
        redo = [k for k in range(settings.candidates_per_job) if k // candidates_batch in groups]
        if missing:  # the job's prompt and references are encoded once for all the groups redone
            images = edit_candidates(
                pipeline,
                [Image.open(p).convert("RGB") for p in job.condition_paths],
                job.prompt,
                budget=settings.budget,
                height=settings.height,
                width=settings.width,
                num_inference_steps=steps,
                true_cfg_scale=true_cfg_scale,
                negative_prompt=" " if true_cfg_scale > 1 else None,
                generators=[torch.Generator(device="cpu").manual_seed(seeds[k]) for k in redo],
                candidates_batch=candidates_batch,
            )
            for k, image in zip(redo, images, strict=True):
                if k in missing:  # a complete candidate is kept as it is, not written again
                    with atomic_path(paths[k]) as tmp:
                        image.save(tmp, format="PNG")
            generated += len(missing)
        for k, (seed, path) in enumerate(zip(seeds, paths, strict=True)):
            records.append(candidate_record(job, k, round_name, str(path), seed, model_version))
            bar.update()
    bar.close()
    return pd.DataFrame(records, columns=list(CANDIDATE_COLUMNS)), generated
