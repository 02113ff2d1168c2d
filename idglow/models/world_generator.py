"""A tiny base generator pre-trained to draw the demo world: the demo profile's generator.

A transformer of random weights draws noise, in which no face is ever found. This module
pre-trains a ``QwenImageTransformer2DModel`` (``zero_cond_t``, as 2511) inside the demo's
``QwenImageEditPlusPipeline`` with rectified flow matching on pairs the world draws afresh: two
or three new people, each as one adult portrait (the references, as the demo dataset draws them:
``render_portrait`` at 256 px), and the group scene (``idglow.data.scenes.render_scene``) of the
same people as adults (Task 1) or as young children (Task 2), with the task's static prompt or a
descriptive one of the drawn attributes. Like a real base model it should learn to draw the
right number of people in a coherent scene, keeping who they are only partly.

Training sees what inference sees: every pair is encoded by ``training.encodings.encode_sample``
(the references resized to the profile's budgets and encoded by ``idglow.editing``, the prompt by
the pipeline's own ``encode_prompt`` with the portraits), and the loss, times and packing are
``training.flow``'s. The VAE and the text encoder stay frozen; the pairs are encoded once.

``benchmarks/world_generator.py`` measures it. The committed stage (``COMMITTED_FOLDER``), with
the committed world VAE and the text encoder it was trained with, is the demo's generator
(``write_committed_world_generator``, built by ``idglow.models.tiny.ensure_tiny_models``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKLQwenImage,
)
from tqdm.auto import tqdm
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from idglow.data.celebahq import CELEBA_ATTRIBUTES
from idglow.data.demo_celebahq import _attributes
from idglow.data.faces import YOUNG_CHILD_AGES, render_portrait, sample_style
from idglow.data.groups import TASKS
from idglow.data.scenes import render_scene
from idglow.editing import ReferenceBudget
from idglow.models.tiny_generator import TINY_TRANSFORMER_CONFIG, assemble_pipeline
from idglow.models.tiny_qwen_vl import build_model, build_processor, build_tokenizer
from idglow.models.world_vae import face_mask
from idglow.prompts import descriptive_prompt, static_prompt
from idglow.storage import atomic_dir, atomic_path
from training.data import Sample
from training.encodings import SampleEncoding, encode_sample, stack
from training.flow import flow_matching_loss, noisy, predict_velocity, randn, sample_sigmas

# 2: the portraits (Picture 1..N) are listed in the scene's left-to-right order (pictures_left_to_right)
RECIPE_VERSION = 2
LR_SCHEDULES = ("cosine", "constant")
PORTRAIT_SIZE = 256  # the demo dataset's portrait side
PORTRAIT_PROMPT = "A new portrait of the person from Picture 1, as they look in the picture, soft natural light."


@dataclass(frozen=True)
class WorldGeneratorConfig:
    """Everything that decides the trained transformer (besides the VAE it is trained with)."""

    seed: int = 0
    resolution: int = 64  # the demo profile's generation_size
    reference_pixels: int = 64 * 64  # the demo profile's budgets (idglow.editing.ReferenceBudget)
    condition_pixels: int = 56 * 56
    pairs: int = 2000  # drawn pairs, encoded once
    steps: int = 1500
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    # after the warmup: "cosine" decays to 0 at the last step; "constant" holds the rate (a run that a
    # later stage continues, or one stopped at any step, ends at full rate)
    lr_schedule: str = "cosine"
    weight_decay: float = 0.01
    num_layers: int = 4
    num_attention_heads: int = 4
    attention_head_dim: int = 32
    axes_dims_rope: tuple[int, int, int] = (8, 12, 12)
    age_transformed_fraction: float = 0.5  # of the pairs, Task 2 (the scene's people drawn as children)
    descriptive_fraction: float = 0.5  # of the pairs, a descriptive prompt (the rest: the task's static one)
    face_weight: float = 0.0  # extra loss weight of the scene tokens over drawn faces (0: every token alike)
    portrait_fraction: float = 0.0  # of the pairs, one person: their portrait and a new portrait of them
    # Picture 1..N from left to right in the scene, as both prompts place them ("Picture 1 ... on
    # the left"); False: in the order render_scene's layout drew them, which shuffles the places
    pictures_left_to_right: bool = True
    # the pipeline's fixed structure (as TINY_TRANSFORMER_CONFIG): patches of 2x2 latents of 16 channels
    patch_size: int = field(default=2, init=False)

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, not {self.lr_schedule!r}")

    @property
    def reference_budget(self) -> ReferenceBudget:
        return ReferenceBudget(self.reference_pixels, self.condition_pixels)

    def transformer_config(self) -> dict:
        return {
            **TINY_TRANSFORMER_CONFIG,
            "num_layers": self.num_layers,
            "num_attention_heads": self.num_attention_heads,
            "attention_head_dim": self.attention_head_dim,
            "axes_dims_rope": tuple(self.axes_dims_rope),
        }


def recipe_stamp(config: WorldGeneratorConfig, vae_stamp: dict | None = None, parent: dict | None = None) -> dict:
    """What decides a trained transformer: the recipe, the VAE and, for a run that starts from an
    earlier stage's weights (``start_from``), that stage's own stamp (so a chain of runs, one per
    session, stays reproducible from seeds: train the innermost stamp, then each one around it)."""
    recipe = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
    stamp = {"recipe": RECIPE_VERSION, "role": "world_generator", "config": recipe, "vae": vae_stamp}
    if parent is not None:
        stamp["parent"] = parent
    return stamp


# ---------------------------------------------------------------------------- data


@dataclass
class WorldPair:
    portraits: list  # PIL, one adult portrait per person
    scene: object  # PIL, the group scene at the config's resolution
    prompt: str
    task: str
    truths: list  # the scene's FaceTruth per person, in the portraits' order


def draw_pair(rng: np.random.Generator, config: WorldGeneratorConfig, task: str | None = None) -> WorldPair:
    """Two or three new people: their portraits and their scene (as children for Task 2); the
    portraits (the prompt's Picture 1..N) listed left to right as the people stand in the scene."""
    if task is None and config.portrait_fraction and rng.random() < config.portrait_fraction:
        return draw_portrait_pair(rng, config)
    if task is None:
        task = TASKS[1] if rng.random() < config.age_transformed_fraction else TASKS[0]
    styles = [sample_style(rng) for _ in range(int(rng.integers(2, 4)))]
    smiles = [float(rng.uniform(-0.3, 1.0)) for _ in styles]
    portraits = [
        render_portrait(style, PORTRAIT_SIZE, rng, smile)[0] for style, smile in zip(styles, smiles, strict=True)
    ]
    people = (
        [
            dict(zip(CELEBA_ATTRIBUTES, _attributes(style, False, smile, rng), strict=True))
            for style, smile in zip(styles, smiles, strict=True)
        ]
        if rng.random() < config.descriptive_fraction
        else None
    )
    ages = (
        [int(rng.integers(YOUNG_CHILD_AGES.start, YOUNG_CHILD_AGES.stop)) for _ in styles]
        if task == "age_transformed"
        else None
    )
    scene, truths, _ = render_scene(styles, config.resolution, rng, ages=ages)
    if config.pictures_left_to_right:  # the same draws as recipe 1, listed in another order
        order = sorted(range(len(styles)), key=lambda i: truths[i].bbox[0] + truths[i].bbox[2])
        portraits, truths = [portraits[i] for i in order], [truths[i] for i in order]
        people = None if people is None else [people[i] for i in order]
    prompt = static_prompt(task, len(styles)) if people is None else descriptive_prompt(task, people)
    return WorldPair(portraits, scene, prompt, task, truths)


def face_token_weights(truths: list, resolution: int, grid: int, face_weight: float) -> torch.Tensor:
    """(grid * grid,) loss weights of a scene's tokens in the pipeline's packed (row-major) order:
    ``1 + face_weight * f``, f the share of the token's pixels in or around a drawn face
    (``world_vae.face_mask``), normalised to a mean of one, so that a 10 px face of a 64 px scene is
    not outvoted by its wall while the loss keeps its scale."""
    mask = face_mask(truths, resolution)
    share = torch.nn.functional.adaptive_avg_pool2d(mask, grid).flatten()
    weights = 1 + face_weight * share
    return weights / weights.mean()


def draw_portrait_pair(rng: np.random.Generator, config: WorldGeneratorConfig) -> WorldPair:
    """One new person: their portrait (the reference) and another portrait of them at the
    generation size (new pose, light and expression): an edit that keeps the identity and has
    one person to take it from, so a short training learns to look at the reference at all."""
    style = sample_style(rng)
    portrait = render_portrait(style, PORTRAIT_SIZE, rng)[0]
    target, truth = render_portrait(style, config.resolution, rng)
    return WorldPair([portrait], target, PORTRAIT_PROMPT, TASKS[0], [truth])


@dataclass(frozen=True)
class _EncodingSettings:
    """What ``encode_sample`` reads of a run config."""

    resolution: int
    reference_budget: ReferenceBudget


@torch.no_grad()
def encode_pairs(pipeline, pairs: list[WorldPair], config: WorldGeneratorConfig, progress: bool = True):
    settings = _EncodingSettings(config.resolution, config.reference_budget)
    encoded: dict[int, list[SampleEncoding]] = {}
    weights: dict[int, list[torch.Tensor]] = {}
    for i, pair in enumerate(tqdm(pairs, desc="encoding world pairs", disable=not progress)):
        sample = Sample(
            f"pair-{i}",
            {"prompt": pair.prompt, "n_subjects": len(pair.portraits)},
            {"target": pair.scene},
            pair.portraits,
        )
        encoding = encode_sample(pipeline, sample, settings)
        grid = math.isqrt(encoding.latents["target"].shape[0])
        encoded.setdefault(len(pair.portraits), []).append(encoding)
        weights.setdefault(len(pair.portraits), []).append(
            face_token_weights(pair.truths, config.resolution, grid, config.face_weight)
        )
    return encoded, weights, settings


# ---------------------------------------------------------------------------- model


def build_pipeline(
    config: WorldGeneratorConfig,
    vae: AutoencoderKLQwenImage,
    text_seed: int = 0,
    text_encoder_folder: Path | None = None,
):
    """The demo generator's pipeline (its scheduler; its tokenizer, processor and tiny text encoder
    of ``text_seed``, or those saved in ``text_encoder_folder``, a Qwen2.5-VL folder such as the
    world prompt model's) with ``vae`` and a fresh transformer of ``config``'s size."""
    if text_encoder_folder is not None:
        processor = AutoProcessor.from_pretrained(text_encoder_folder, local_files_only=True)
        text_encoder = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            text_encoder_folder, local_files_only=True
        ).eval()
        tokenizer = processor.tokenizer
    else:
        tokenizer = build_tokenizer()
        processor = build_processor(tokenizer)
        text_encoder = build_model(tokenizer, text_seed)
    return assemble_pipeline(config.seed, tokenizer, processor, text_encoder, config.transformer_config(), vae)


def _learning_rate(config: WorldGeneratorConfig, step: int) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.learning_rate
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


def training_step(pipeline, optimizer, config: WorldGeneratorConfig, step: int, batch, generator, token_weights=None):
    """One flow-matching step of ``pipeline.transformer`` on ``batch`` (an ``EncodedBatch``):
    times and noise from ``generator``, the learning rate of ``step``; returns the loss."""
    transformer = pipeline.transformer
    sigma = sample_sigmas(batch.x0.shape[0], batch.x0.shape[1], pipeline.scheduler, generator)
    noise = randn(tuple(batch.x0.shape), generator)
    x_t = noisy(batch.x0, noise, sigma)
    velocity = predict_velocity(transformer, x_t, batch.refs, batch.prompt, batch.mask, sigma, batch.shapes)
    loss = flow_matching_loss(velocity, batch.x0, noise, token_weights).mean()
    for group in optimizer.param_groups:
        group["lr"] = _learning_rate(config, step)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
    optimizer.step()
    return loss


def train_transformer(
    pipeline,
    config: WorldGeneratorConfig,
    progress: bool = True,
    checkpoint_folder: Path | None = None,
    checkpoint_every: int = 250,
    snapshot_every: int | None = None,
    stop_after: int | None = None,
    start_from: Path | None = None,
) -> list[dict]:
    """Draw and encode ``config.pairs`` pairs, then train ``pipeline.transformer`` with flow
    matching for ``config.steps`` steps; returns the per-step log.

    With ``checkpoint_folder``, every ``checkpoint_every`` steps the transformer, the optimizer, the
    batch stream and the log are saved there (atomically, ``checkpoint.pt`` keyed by the recipe), and
    a later call with the same recipe resumes from them: a killed run of hours loses at most
    ``checkpoint_every`` steps, and the resumed run ends with the weights of an uninterrupted one.
    ``snapshot_every`` also keeps the transformer's weights at those steps (``step_NNNNNN.pt``) to
    score along the training. ``stop_after`` ends the call after that many steps in all (a checkpoint
    saved there), as a killed run would. ``start_from``: a stage folder (``save_stage``) whose
    weights the transformer starts from instead of its seeded init (with a fresh optimizer)."""
    parent = None
    if start_from is not None:
        weights, parent = load_stage(start_from, config, pipeline)
        pipeline.transformer.load_state_dict(weights)
    recipe = recipe_stamp(config, parent=parent)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rng = np.random.default_rng([config.seed, 91])
        pairs = [draw_pair(rng, config) for _ in range(config.pairs)]
        pipeline.text_encoder.eval()
        encoded, token_weights, settings = encode_pairs(pipeline, pairs, config, progress)
        transformer = pipeline.transformer.train()
        optimizer = torch.optim.AdamW(
            transformer.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        batch_rng = np.random.default_rng([config.seed, 92])
        log = load_checkpoint(checkpoint_folder, recipe, pipeline, optimizer, batch_rng) or []
        sizes = sorted(encoded)
        weights = np.array([len(encoded[n]) for n in sizes], dtype=float)
        last = config.steps if stop_after is None else min(config.steps, stop_after)
        bar = tqdm(
            range(len(log), last), desc="training the world generator", disable=not progress, initial=len(log),
            total=config.steps,
        )  # fmt: skip
        for step in bar:
            n = sizes[int(batch_rng.choice(len(sizes), p=weights / weights.sum()))]
            chosen = batch_rng.choice(len(encoded[n]), size=min(config.batch_size, len(encoded[n])), replace=False)
            batch = stack([encoded[n][int(i)] for i in chosen], "target", settings)
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
            face_weights = torch.stack([token_weights[n][int(i)] for i in chosen])
            loss = training_step(pipeline, optimizer, config, step, batch, generator, face_weights)
            log.append({"step": step + 1, "loss": loss.item(), "n": n, "time": time.time()})
            if step % 10 == 0:
                bar.set_postfix(loss=f"{np.mean([r['loss'] for r in log[-50:]]):.4f}", refresh=False)
            if checkpoint_folder is not None:
                if snapshot_every and (step + 1) % snapshot_every == 0:
                    with atomic_path(checkpoint_folder / f"{SNAPSHOT_PREFIX}{step + 1:06d}.pt") as tmp:
                        torch.save(transformer.state_dict(), tmp)
                if (step + 1) % checkpoint_every == 0 or step + 1 == last:
                    save_checkpoint(checkpoint_folder, recipe, pipeline, optimizer, batch_rng, log)
        transformer.eval()
    finally:
        torch.set_num_threads(threads)
    return log


CHECKPOINT = "checkpoint.pt"
SNAPSHOT_PREFIX = "step_"


def snapshots(folder: Path) -> list[tuple[int, Path]]:
    """The transformer snapshots ``train_transformer`` kept in ``folder``: (step, path), by step."""
    found = [
        (int(path.stem.removeprefix(SNAPSHOT_PREFIX)), path) for path in Path(folder).glob(f"{SNAPSHOT_PREFIX}*.pt")
    ]
    return sorted(found)


def _weight_checksum(module: torch.nn.Module) -> float:
    return round(sum(float(value.double().sum()) for value in module.state_dict().values()), 6)


def _vae_key(pipeline) -> dict:
    """What a checkpoint records of the frozen VAE it was trained with: its config and a checksum
    of its weights (a resumed run on another VAE would learn two latent spaces)."""
    config = {k: v for k, v in pipeline.vae.config.items() if not k.startswith("_")}  # not where it was loaded from
    key = {"config": config, "checksum": _weight_checksum(pipeline.vae)}
    return json.loads(json.dumps(key))  # as a stamp file reads back


def save_checkpoint(folder: Path, recipe: dict, pipeline, optimizer, batch_rng: np.random.Generator, log) -> None:
    state = {
        "recipe": recipe,
        "vae": _vae_key(pipeline),
        "transformer": pipeline.transformer.state_dict(),
        "optimizer": optimizer.state_dict(),
        "batch_rng": batch_rng.bit_generator.state,
        "log": log,
    }
    with atomic_path(Path(folder) / CHECKPOINT) as tmp:
        torch.save(state, tmp)


def load_checkpoint(folder: Path | None, recipe: dict, pipeline, optimizer, batch_rng) -> list[dict] | None:
    """Restore a run of ``recipe`` (``recipe_stamp``) saved in ``folder``; the log so far, or None
    where there is none (a checkpoint of another recipe or VAE is refused: it would mix two runs' weights)."""
    path = None if folder is None else Path(folder) / CHECKPOINT
    if path is None or not path.exists():
        return None
    state = torch.load(path, weights_only=False)
    if state["recipe"] != recipe:
        raise ValueError(
            f"{path} was saved by another recipe ({state['recipe']['config']}); remove it or train into another folder"
        )
    if state["vae"] != _vae_key(pipeline):
        raise ValueError(f"{path} was trained with another VAE; remove it or train into another folder")
    pipeline.transformer.load_state_dict(state["transformer"])
    optimizer.load_state_dict(state["optimizer"])
    batch_rng.bit_generator.state = state["batch_rng"]
    return state["log"]


def checkpoint_folder_for(folder: Path) -> Path:
    """Where ``write_world_generator`` keeps a run's checkpoint and snapshots: beside ``folder``."""
    folder = Path(folder)
    return folder.parent / f"{folder.name}.training"


def write_world_generator(
    folder: Path,
    config: WorldGeneratorConfig,
    vae_folder: Path,
    progress: bool = True,
    checkpoint_every: int = 250,
    snapshot_every: int | None = None,
    start_from: Path | None = None,
) -> tuple[object, list[dict]]:
    """Train a world generator with the VAE saved in ``vae_folder`` and save the whole pipeline
    into ``folder`` (``save_pretrained``); returns the pipeline and the training log. The run's
    checkpoint (``train_transformer``'s ``checkpoint_every``, ``snapshot_every``) is kept in
    ``checkpoint_folder_for(folder)``, so a killed run resumes; ``start_from`` as ``train_transformer``'s."""
    vae = AutoencoderKLQwenImage.from_pretrained(vae_folder)
    pipeline = build_pipeline(config, vae)
    log = train_transformer(
        pipeline, config, progress, checkpoint_folder_for(folder), checkpoint_every, snapshot_every,
        start_from=start_from,
    )  # fmt: skip
    with atomic_dir(folder) as staging:
        pipeline.save_pretrained(staging)
    return pipeline, log


# ---------------------------------------------------------------------------- stages

# A stage: one run's trained transformer, kept to start the next run from. The base needs more
# core-hours than one session has, so each session's run is saved as a stage (committed in
# COMMITTED_FOLDER, bf16: half the bytes) and the next one continues from it.
COMMITTED_FOLDER = Path(__file__).parent / "weights" / "world_generator"
STAGE_STAMP = "stamp.json"  # recipe_stamp(config, the VAE's key, the parent stage's stamp)
STAGE_REPORT = "training.json"  # the stamp, the loss curve's ends, how long it took
STAGE_DTYPE = torch.bfloat16
# what must match for a stage's weights to fit; the seed may differ (a later stage's new pairs and noise)
_MODEL_FIELDS = ("num_layers", "num_attention_heads", "attention_head_dim", "axes_dims_rope")


def _text_encoder_key(pipeline) -> dict:
    """The frozen text encoder's class and a checksum of its weights (the prompt embeddings a stage
    learnt to read: the seeded tiny twin of ``build_pipeline`` or a saved Qwen2.5-VL)."""
    return {"class": type(pipeline.text_encoder).__name__, "checksum": _weight_checksum(pipeline.text_encoder)}


def stage_stamp(config: WorldGeneratorConfig, pipeline, parent: dict | None = None) -> dict:
    return {**recipe_stamp(config, _vae_key(pipeline), parent), "text_encoder": _text_encoder_key(pipeline)}


def save_stage(folder: Path, pipeline, config: WorldGeneratorConfig, log: list[dict], parent: dict | None = None):
    """Save ``pipeline``'s trained transformer (``save_pretrained``, in ``STAGE_DTYPE``) into
    ``folder`` atomically, with its stamp and a training report."""
    stamp = stage_stamp(config, pipeline, parent)
    losses = [row["loss"] for row in log]
    report = {
        **stamp,
        "steps_trained": len(log),
        "first_loss": float(np.mean(losses[:50])),
        "last_loss": float(np.mean(losses[-50:])),
        "seconds": log[-1]["time"] - log[0]["time"] if log else 0.0,
    }
    with atomic_dir(Path(folder)) as staging:
        transformer = type(pipeline.transformer).from_config(pipeline.transformer.config)
        transformer.load_state_dict(pipeline.transformer.state_dict())
        transformer.to(STAGE_DTYPE).save_pretrained(Path(staging) / "transformer")
        (Path(staging) / STAGE_STAMP).write_text(json.dumps(stamp, indent=2))
        (Path(staging) / STAGE_REPORT).write_text(json.dumps(report, indent=2))


def _check_frozen_parts(stamp: dict, pipeline, what: str) -> None:
    """Refuse a stamp whose VAE (another latent space) or text encoder is not ``pipeline``'s."""
    if stamp["vae"] != _vae_key(pipeline):
        raise ValueError(f"{what} was trained with another VAE")
    if stamp["text_encoder"] != _text_encoder_key(pipeline):
        raise ValueError(f"{what} was trained with another text encoder")


def load_stage(folder: Path, config: WorldGeneratorConfig, pipeline) -> tuple[dict, dict]:
    """A stage's weights (as float32) and its stamp, checked against the run that starts from it:
    the same transformer size, VAE (another VAE is another latent space) and text encoder."""
    folder = Path(folder)
    if not (folder / STAGE_STAMP).exists():
        raise FileNotFoundError(f"{folder} holds no stage ({STAGE_STAMP} is missing); save one with save_stage")
    stamp = json.loads((folder / STAGE_STAMP).read_text())
    ours = recipe_stamp(config)["config"]
    differing = [name for name in _MODEL_FIELDS if stamp["config"][name] != ours[name]]
    if differing:
        raise ValueError(f"the stage in {folder} is another model: {', '.join(differing)} differ")
    _check_frozen_parts(stamp, pipeline, f"the stage in {folder}")
    transformer = type(pipeline.transformer).from_pretrained(folder / "transformer")
    weights = {name: value.float() for name, value in transformer.state_dict().items()}
    return weights, stamp


def stage_chain(stamp: dict) -> list[dict]:
    """The runs that made a stage, first to last (each stamp's ``parent`` is the one before)."""
    chain = [stamp]
    while "parent" in chain[0]:
        chain.insert(0, chain[0]["parent"])
    return chain


def config_of(stamp: dict) -> WorldGeneratorConfig:
    """The ``WorldGeneratorConfig`` a stamp records (refused where the recipe has changed since)."""
    if stamp["recipe"] != RECIPE_VERSION:
        raise ValueError(f"the stamp is of recipe {stamp['recipe']}, this code trains recipe {RECIPE_VERSION}")
    settable = {f.name for f in fields(WorldGeneratorConfig) if f.init}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in stamp["config"].items() if k in settable}
    return WorldGeneratorConfig(**values)


def reproduce_stages(stamp: dict, folder: Path, vae_folder: Path, progress: bool = True) -> Path:
    """Train every run of ``stamp``'s chain in order into ``folder`` (``stage_1`` ... ``stage_K``,
    each started from the one before, each resumable): the last one is the stage ``stamp`` describes."""
    vae = AutoencoderKLQwenImage.from_pretrained(vae_folder)
    previous = None
    for index, run in enumerate(stage_chain(stamp), start=1):
        config = config_of(run)
        target = Path(folder) / f"stage_{index}"
        if (target / STAGE_STAMP).exists() and json.loads((target / STAGE_STAMP).read_text()) == run:
            previous = target
            continue
        pipeline = build_pipeline(config, vae)
        _check_frozen_parts(run, pipeline, f"stage {index} of the chain")
        log = train_transformer(
            pipeline, config, progress, checkpoint_folder_for(target), start_from=previous
        )  # fmt: skip
        save_stage(target, pipeline, config, log, run.get("parent"))
        previous = target
    return previous


def committed_stamp(folder: Path = COMMITTED_FOLDER) -> dict:
    """The stamp of the stage in ``folder`` (its recipe, VAE, text encoder and parents)."""
    return json.loads((Path(folder) / STAGE_STAMP).read_text())


def committed_pipeline(stage_folder: Path = COMMITTED_FOLDER, vae_folder: Path | None = None):
    """The pipeline a stage was trained in, with its weights: the VAE of ``vae_folder`` (default
    the committed world VAE), ``build_pipeline``'s text encoder and the stage's transformer (in
    float32). ``load_stage`` refuses a stage whose VAE or text encoder is not these."""
    from idglow.models.world_vae import COMMITTED_FOLDER as VAE_FOLDER

    config = config_of(committed_stamp(stage_folder))
    pipeline = build_pipeline(config, AutoencoderKLQwenImage.from_pretrained(vae_folder or VAE_FOLDER))
    weights, _ = load_stage(stage_folder, config, pipeline)
    pipeline.transformer.load_state_dict(weights)
    pipeline.transformer.eval()
    return pipeline


def write_committed_world_generator(folder: Path, stage_folder: Path = COMMITTED_FOLDER) -> Path:
    """Save ``committed_pipeline(stage_folder)`` into ``folder`` with ``save_pretrained`` (the
    folder ``QwenImageEditPlusPipeline.from_pretrained`` loads, as the real generator's)."""
    committed_pipeline(stage_folder).save_pretrained(folder)
    return Path(folder)


def main() -> None:
    import argparse

    from idglow.models.world_vae import COMMITTED_FOLDER as VAE_FOLDER

    parser = argparse.ArgumentParser(description="Retrain the committed world generator's stages into a folder.")
    parser.add_argument("folder", type=Path, help="where the stages go (stage_1 ... stage_K; a rerun resumes)")
    folder = parser.parse_args().folder
    stamp = json.loads((COMMITTED_FOLDER / STAGE_STAMP).read_text())
    print(f"reproduced: {reproduce_stages(stamp, folder, VAE_FOLDER)}")


if __name__ == "__main__":
    main()
