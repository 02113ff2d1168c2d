"""Stage 1, supervised fine-tuning with the modulated multi-face identity loss (Eq. 1-5).

    python -m training.sft --config sft.json

Read top to bottom: configuration, model set-up (LoRA with peft on the transformer), one
training step (on encodings cached per sample on disk: training.encodings), checkpoints, and
the loop.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from diffusers import QwenImageEditPlusPipeline
from diffusers.training_utils import cast_training_params
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from idglow.editing import ReferenceBudget
from idglow.shards import load_manifest
from idglow.storage import atomic_path, tensors_sha256, write_json_atomic, write_text_atomic
from training import modulation
from training.data import Sample, batches
from training.distributed import DistributedContext, setup_distributed, wrap_for_data_parallel
from training.encodings import EncodedBatch, EncodingCache
from training.flow import (
    Generators,
    flow_matching_loss,
    noisy,
    predict_velocity,
    randn,
    sample_generators,
    sample_sigmas,
)
from training.identity import IdentityLoss
from training.memory import plan_checkpointing
from training.reporting import run_command

DEFAULT_LORA_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
    "img_mlp.net.2",
    "txt_mlp.net.2",
)


AUTO = "auto"  # gradient_checkpoint_blocks: the memory planner's count on CUDA (training.memory), 0 on the CPU


@dataclass
class SFTConfig:
    """Every knob of an SFT run; written into each checkpoint's manifest."""

    generator_dir: str
    shards: str
    output_dir: str
    steps: int = 10
    batch_size: int = 1
    resolution: int = 64  # target side in pixels
    # The reference budgets (reference_budget): the VAE's is the square of this side, the text
    # encoder's vision input's is condition_pixels; inference resizes references with the same ones.
    reference_resolution: int = 64
    condition_pixels: int = 56 * 56
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    gradient_accumulation: int = 1
    lora_rank: int = 4
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    modulation: str = "task"  # task (annealing for Task 1, gate for Task 2), annealing, gate, constant, none
    lambda_id: float = 0.1
    tau: float = 0.2
    t1: float = 0.3
    t2: float = 0.7
    face_pack_dir: str | None = None  # insightface pack for the ID loss; None disables it
    # Content fingerprints of model folders above, by field (the Dagster assets fill them): they
    # stand for those folders' paths in the run key and the resume check (location_fields).
    model_fingerprints: dict[str, str] = field(default_factory=dict)
    logit_mean: float = 0.0
    logit_std: float = 1.0
    resolution_shift: bool = True
    checkpoint_every: int = 5  # steps between checkpoints (the last step always gets one)
    checkpoint_every_minutes: float | None = None  # also checkpoint when this long has passed since the last one
    gradient_checkpoint_blocks: int | str = (
        0  # recompute the first N transformer blocks in backward (-1: all; "auto": planned)
    )
    memory_fraction: float = 0.9  # share of the GPU's memory the "auto" plan may fill
    compile: bool = False  # torch.compile the repeated transformer block (regional compilation)
    attention_backend: str | None = None  # diffusers attention backend, e.g. "_native_cudnn"; None: its default
    seed: int = 0
    device: str | None = None
    # Per-sample encodings on disk, shared by runs (training.encodings); None: encodings/ beside output_dir.
    encoding_cache_dir: str | None = None

    def __post_init__(self) -> None:
        # Run config carries the count as text ("auto" or a number: Dagster config has no unions).
        blocks = self.gradient_checkpoint_blocks
        if isinstance(blocks, str) and blocks != AUTO:
            try:
                self.gradient_checkpoint_blocks = int(blocks)
            except ValueError:
                raise ValueError(
                    f"gradient_checkpoint_blocks must be a block count or {AUTO!r}, not {blocks!r}"
                ) from None

    @property
    def reference_budget(self) -> ReferenceBudget:
        """The pixel budgets each reference portrait is resized to, as ``idglow.editing.edit`` resizes them."""
        return ReferenceBudget(self.reference_resolution**2, self.condition_pixels)

    @classmethod
    def from_file(cls, path: Path) -> SFTConfig:
        return cls(**json.loads(Path(path).read_text()))


# What the launchpad shows beside each run-config field (assets/training.py); docs/training.md
# has the same table with the reasons behind the defaults.
FIELD_HELP = {
    "steps": "optimizer steps of the run",
    "batch_size": "samples per batch (per rank under torchrun)",
    "learning_rate": "AdamW learning rate of the LoRA weights",
    "weight_decay": "AdamW weight decay",
    "max_grad_norm": "gradient clipping norm",
    "gradient_accumulation": "batches per optimizer step",
    "lora_rank": "LoRA rank r (alpha = r)",
    "lora_targets": "transformer module names that get a LoRA",
    "modulation": "lambda(t): task (annealing for Task 1, gate for Task 2), annealing, gate, constant, none",
    "lambda_id": "lambda_id, the identity loss weight (Eq. 4-5)",
    "tau": "tau, the annealing threshold (Eq. 4)",
    "t1": "t_1, the gate's lower end (Eq. 5)",
    "t2": "t_2, the gate's upper end (Eq. 5)",
    "logit_mean": "mean of the logit-normal t sampling",
    "logit_std": "standard deviation of the logit-normal t sampling",
    "resolution_shift": "move t by the scheduler's resolution shift",
    "checkpoint_every": "steps between checkpoints (the last step always gets one)",
    "checkpoint_every_minutes": "also checkpoint when this many minutes passed since the last one (null: steps only)",
    "gradient_checkpoint_blocks": "transformer blocks recomputed in backward: a count (-1: all), or auto (the fewest "
    "that fit memory_fraction of the GPU, planned on the first batch; 0 on the CPU)",
    "memory_fraction": "share of the GPU's memory the auto plan may fill",
    "compile": "torch.compile the repeated transformer block",
    "attention_backend": "diffusers attention backend, e.g. _native_cudnn (null: its default)",
    "encoding_cache_dir": "folder of the per-sample encodings, shared by runs (null: encodings/ beside the run folder)",
}

# What may change between a run's start and its resume: where the run and its encodings live,
# which device it runs on and how much it recomputes to fit there (recomputation leaves the
# gradients as they are, and a cached encoding equals a fresh one: both tested), not what it
# trains. Every other field must equal the checkpoint's saved config.
MAY_DIFFER_ON_RESUME = ("output_dir", "device", "gradient_checkpoint_blocks", "memory_fraction", "encoding_cache_dir")


def location_fields(config: dict) -> set[str]:
    """The fields of a config (as a dict) that say where a run works, not what it trains:
    MAY_DIFFER_ON_RESUME, and the model folders whose content fingerprint it carries in
    ``model_fingerprints`` (a models directory mounted elsewhere holds the same models)."""
    return set(MAY_DIFFER_ON_RESUME) | set(config.get("model_fingerprints") or {})


class ConfigMismatch(ValueError):
    """A run folder holds checkpoints of a run with other settings."""


def config_differences(saved: dict, current: dict) -> dict[str, tuple]:
    """Fields whose saved and current values differ, as (saved, current); "<absent>" for a field
    one side lacks (a checkpoint written before the field existed). A model folder's path counts
    only when one side lacks its fingerprint (``model_fingerprints`` is compared itself)."""
    names = sorted((saved.keys() | current.keys()) - (location_fields(saved) & location_fields(current)))
    absent = "<absent>"
    return {
        name: (saved.get(name, absent), current.get(name, absent))
        for name in names
        if saved.get(name, absent) != current.get(name, absent)
    }


def check_resumable(checkpoint: Path, config: SFTConfig) -> None:
    """Refuse to resume ``checkpoint`` with a config other than the one it was trained with:
    the result would be neither run."""
    saved = json.loads((checkpoint / "manifest.json").read_text())["config"]
    differences = config_differences(saved, json.loads(json.dumps(asdict(config))))  # compared as the manifest holds it
    if differences:
        listed = "; ".join(
            f"{name}: saved {old!r}, now {new!r}"
            for name, old, new in ((name, *values) for name, values in differences.items())
        )
        raise ConfigMismatch(
            f"{checkpoint.parent} holds a run trained with other settings ({listed}); it cannot be resumed "
            f"with these. Use another output_dir (the Dagster assets key each run's folder by its whole config), "
            f"or restore the saved values to resume it."
        )


# ------------------------------------------------------------------------- set-up


def load_generator(config: SFTConfig) -> QwenImageEditPlusPipeline:
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    pipeline = QwenImageEditPlusPipeline.from_pretrained(config.generator_dir, dtype=dtype, local_files_only=True).to(
        device
    )
    pipeline.set_progress_bar_config(disable=True)
    for module in (pipeline.vae, pipeline.text_encoder, pipeline.transformer):
        module.requires_grad_(False)
    return pipeline


def add_lora(transformer, config: SFTConfig, adapter_name: str = "default") -> LoraConfig:
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_rank,
        init_lora_weights="gaussian",
        target_modules=list(config.lora_targets),
    )
    torch.manual_seed(config.seed)
    transformer.add_adapter(lora, adapter_name=adapter_name)
    return lora


def lora_metadata(lora: LoraConfig) -> dict:
    """The adapter config saved beside the weights, with its sets sorted: peft keeps
    ``target_modules`` as a set, whose order changes from process to process, and the file's
    SHA-256 (a model version's name) must depend on the weights alone."""
    return {
        key: sorted(value) if isinstance(value, set | frozenset) else value for key, value in lora.to_dict().items()
    }


def checkpoint_blocks(transformer, count: int) -> int:
    """Selective gradient checkpointing: the first ``count`` blocks (all for -1) recompute their
    activations in the backward pass, the rest keep them. Calling it again changes the count
    (the memory planner of the GPU benchmark does). The blocks keep their names, so LoRA keys
    do not change."""
    blocks = list(transformer.transformer_blocks)
    chosen = len(blocks) if count < 0 else min(count, len(blocks))
    for index, block in enumerate(blocks):
        if not hasattr(block, "recompute_in_backward"):
            original = block.forward

            def forward(*args, _block=block, _original=original, **kwargs):
                if _block.recompute_in_backward and torch.is_grad_enabled():
                    return torch.utils.checkpoint.checkpoint(_original, *args, use_reentrant=False, **kwargs)
                return _original(*args, **kwargs)

            block.forward = forward
        block.recompute_in_backward = index < chosen
    return chosen


def lambda_for(config: SFTConfig, sigma: torch.Tensor, tasks: list[str]) -> torch.Tensor:
    """lambda(t) per sample; ``task`` picks annealing for Task 1 and the gate for Task 2 (task-adaptive)."""
    annealing = modulation.linear_annealing(sigma, config.lambda_id, config.tau)
    gate = modulation.temporal_gate(sigma, config.lambda_id, config.t1, config.t2)
    if config.modulation == "task":
        is_child = torch.tensor([task == "age_transformed" for task in tasks])
        return torch.where(is_child, gate, annealing)
    return {
        "annealing": annealing,
        "gate": gate,
        "constant": modulation.constant(sigma, config.lambda_id),
        "none": modulation.none(sigma),
    }[config.modulation]


# ---------------------------------------------------------------------- encodings


# EncodedBatch and EncodingCache live in training.encodings (per-sample files on disk, read per step).


# --------------------------------------------------------------------------- step


def sft_loss(
    transformer,
    scheduler,
    batch: EncodedBatch,
    tasks: list[str],
    config: SFTConfig,
    generator: Generators,
    identity=None,
    samples: list[Sample] | None = None,
) -> tuple[torch.Tensor, dict]:
    """L_SFT = L_FM + lambda(t) * L_ID, averaged over the batch (Eq. 1), on encoded tensors.

    ``transformer`` may be wrapped for data parallelism (it is only called). ``generator`` is one
    generator or one per sample. ``identity(x_t, velocity, sigma, lambdas, samples)`` returns the
    IdentityTerm; None leaves it out."""
    x0 = batch.x0
    noise = randn(tuple(x0.shape), generator).to(x0.device, x0.dtype)
    sigma = sample_sigmas(
        x0.shape[0], x0.shape[1], scheduler, generator, config.logit_mean, config.logit_std, config.resolution_shift
    ).to(x0.device)
    x_t = noisy(x0, noise, sigma)
    velocity = predict_velocity(transformer, x_t, batch.refs, batch.prompt, batch.mask, sigma, batch.shapes)
    fm = flow_matching_loss(velocity, x0, noise)
    lambdas = lambda_for(config, sigma.cpu(), tasks).to(fm.device)
    logs = {"loss_fm": fm.mean().item(), "lambda": lambdas.mean().item(), "sigma": sigma.mean().item()}
    loss = fm
    if identity is not None:
        term = identity(x_t, velocity, sigma, lambdas, samples)
        loss = fm + term.weighted
        logs.update(
            loss_id=term.losses.sum().item() / max(term.decoded, 1),
            decoded=term.decoded,
            detections=sum(d for d in term.detections if d >= 0),
        )
        logs.update(detection_rate_by_t_bin(term.detections, sigma, expected=len(batch.shapes) - 1))
    return loss.mean(), logs


def sft_step(
    model,
    pipeline,
    cache: EncodingCache,
    samples: list[Sample],
    config: SFTConfig,
    generator: Generators,
    identity=None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One batch of samples: encodings from the cache, then ``sft_loss`` through ``model`` (the
    transformer, or its data-parallel wrapper)."""
    return sft_loss(
        model,
        pipeline.scheduler,
        cache.batch(samples, "target"),
        [s.meta["task"] for s in samples],
        config,
        generator,
        identity,
        samples,
    )


def detection_rate_by_t_bin(detections: list[int], sigma: torch.Tensor, expected: int, bins: int = 5) -> dict:
    """Faces found per expected face (the batch's subject count), per sigma bin, for the samples
    whose ID loss ran: at high t the clean estimate is a blur and detection fails, which the
    loss alone would hide."""
    found: dict[str, list[float]] = {}
    for index, count in enumerate(detections):
        if count < 0:
            continue
        b = min(int(float(sigma[index]) * bins), bins - 1)
        found.setdefault(f"detect_rate_t{b / bins:.1f}-{(b + 1) / bins:.1f}", []).append(
            min(count, expected) / expected
        )
    return {key: sum(values) / len(values) for key, values in found.items()}


# -------------------------------------------------------------------- checkpoints


def save_checkpoint(
    folder: Path, transformer, optimizer, step: int, position: int, config: SFTConfig, lora: LoraConfig, shard_hash: str
) -> Path:
    """LoRA (diffusers format), optimizer tensors and the torch RNG in safetensors, the rest in
    JSON, and a manifest with the checkpoint's SHA-256 and the shard manifest it trained on.
    (Noise and t come from per-sample generators seeded by the step, so need no saved state.)"""
    folder.mkdir(parents=True, exist_ok=True)
    QwenImageEditPlusPipeline.save_lora_weights(
        folder,
        transformer_lora_layers=get_peft_model_state_dict(transformer),
        transformer_lora_adapter_metadata=lora_metadata(lora),
    )
    optimizer_state = optimizer.state_dict()
    tensors = {"rng.torch": torch.get_rng_state()}
    for index, state in optimizer_state["state"].items():
        for name, value in state.items():
            tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
    with atomic_path(folder / "training_state.safetensors") as tmp:
        save_file(tensors, str(tmp))
    write_json_atomic(
        folder / "training_state.json",
        {
            "step": step,
            "data_position": position,
            "param_groups": optimizer_state["param_groups"],
        },
    )
    lora_file = folder / "pytorch_lora_weights.safetensors"
    manifest = {
        # "lora_sha256" is the tensors' content hash (tensors_sha256), not the file's SHA-256: the
        # safetensors header's metadata order changes from process to process. The key keeps its
        # name because the model versions, the registry and the Pipes reports read it.
        "step": step,
        "lora_sha256": tensors_sha256(lora_file),
        "shard_manifest_sha256": shard_hash,
        "config": asdict(config),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json_atomic(folder / "manifest.json", manifest)
    return folder


def load_checkpoint(folder: Path, transformer, optimizer) -> tuple[int, int]:
    """Restore LoRA weights, optimizer, RNG; returns (step, data position)."""
    lora = load_file(str(folder / "pytorch_lora_weights.safetensors"))
    state = {k.removeprefix("transformer."): v for k, v in lora.items()}
    set_peft_model_state_dict(transformer, state)
    tensors = load_file(str(folder / "training_state.safetensors"))
    meta = json.loads((folder / "training_state.json").read_text())
    optimizer_state: dict = {"state": {}, "param_groups": meta["param_groups"]}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            optimizer_state["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(optimizer_state)
    torch.set_rng_state(tensors["rng.torch"])
    return meta["step"], meta["data_position"]


def checkpoint_due(step: int, config: SFTConfig, seconds_since_last: float) -> bool:
    """Whether the loop saves a checkpoint after ``step``: every ``checkpoint_every`` steps, when
    ``checkpoint_every_minutes`` have passed since the last one, and at the end."""
    if step == config.steps or step % config.checkpoint_every == 0:
        return True
    return config.checkpoint_every_minutes is not None and seconds_since_last >= 60 * config.checkpoint_every_minutes


def latest_checkpoint(output_dir: Path) -> Path | None:
    done = sorted(p.parent for p in output_dir.glob("step-*/manifest.json"))
    return done[-1] if done else None


def truncate_log(log: Path, step: int) -> None:
    """Keep the log's rows up to ``step`` (the checkpoint a run resumes from, 0 for a fresh
    start): the steps after it are trained again and logged again, and each step must appear
    once. A torn last line (a run killed while writing it) goes too."""
    if not log.exists():
        return
    kept = []
    for line in log.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("step", step + 1) <= step:
            kept.append(line + "\n")
    write_text_atomic(log, "".join(kept))


# --------------------------------------------------------------------------- loop


def prepare_trainable(
    transformer, config: SFTConfig
) -> tuple[LoraConfig, list[torch.nn.Parameter], torch.optim.Optimizer]:
    """A fresh LoRA, the speed levers the config asks for, and AdamW over the LoRA weights.

    On CUDA the base weights stay bf16 while the LoRA weights and the optimizer state are fp32
    (the step runs under bf16 autocast), and AdamW is the fused kernel."""
    lora = add_lora(transformer, config)
    on_gpu = transformer.device.type == "cuda"
    if on_gpu:
        cast_training_params(transformer, dtype=torch.float32)
    if config.attention_backend:
        transformer.set_attention_backend(config.attention_backend)
    # "auto" starts with none recomputed; on CUDA the loop plans the count on its first batch.
    checkpoint_blocks(
        transformer, 0 if config.gradient_checkpoint_blocks == AUTO else config.gradient_checkpoint_blocks
    )
    if config.compile:
        transformer.compile_repeated_blocks(dynamic=False)
    parameters = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay, fused=on_gpu)
    return lora, parameters, optimizer


def optimizer_step(
    step_fn, next_batch, parameters, optimizer, config: SFTConfig, model=None
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """One optimizer step: ``gradient_accumulation`` batches (bf16 autocast on CUDA), clipping, AdamW.
    With a data-parallel ``model`` the gradients are all-reduced once, on the last batch.
    Returns the last batch's loss, the gradient norm before clipping, and the last batch's logs."""
    on_gpu = parameters[0].device.type == "cuda"
    optimizer.zero_grad(set_to_none=True)
    for index in range(config.gradient_accumulation):
        last = index == config.gradient_accumulation - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
                loss, logs = step_fn(next_batch())
            (loss / config.gradient_accumulation).backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
    optimizer.step()
    return loss, grad_norm, logs


def plan_recomputation(transformer, parameters, optimizer, config: SFTConfig, loss_fn) -> tuple[int, dict]:
    """The ``auto`` count of recomputed blocks on CUDA: the memory planner (training.memory) over
    the forward and backward of ``loss_fn`` (one batch, no update, gradients cleared after), the
    budget ``memory_fraction`` of the card. AdamW's two moments, allocated at the first update,
    are counted on top when they do not exist yet."""

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = loss_fn()
        loss.backward()
        optimizer.zero_grad(set_to_none=True)

    moments = 0.0 if optimizer.state else 2.0 * sum(p.numel() * p.element_size() for p in parameters)
    budget = torch.cuda.get_device_properties(transformer.device).total_memory * config.memory_fraction
    return plan_checkpointing(
        run, lambda count: checkpoint_blocks(transformer, count), len(transformer.transformer_blocks), budget, moments
    )


def run_loop(
    config: SFTConfig,
    pipeline,
    step_fn,
    stop_after: int | None = None,
    dist: DistributedContext | None = None,
    on_step=None,
    plan_step_fn=None,
) -> Path:
    """The loop SFT and DPO share: a fresh LoRA on the transformer, AdamW, resume from the latest
    checkpoint, gradient accumulation and clipping, a JSON line per step, checkpoints.
    ``step_fn(model, samples, generators)`` returns (loss, logs) for one batch. Under torchrun the
    transformer is wrapped in DistributedDataParallel, each rank reads its own shards, and only
    rank 0 writes the log and the checkpoints (and calls ``on_step`` with each log row). Returns
    the latest checkpoint; ``stop_after`` ends the run early (a simulated interruption for resume
    tests). With ``gradient_checkpoint_blocks: auto`` on CUDA each rank plans its recomputation on
    its first batch with ``plan_step_fn`` (the step's heaviest form; default ``step_fn``), before
    the wrap, so that no probe takes part in DDP's all-reduce."""
    dist = dist or DistributedContext()
    output_dir = Path(config.output_dir)
    transformer = pipeline.transformer
    lora, parameters, optimizer = prepare_trainable(transformer, config)
    step, position = 0, 0
    resume_from = latest_checkpoint(output_dir)
    if resume_from is not None:
        check_resumable(resume_from, config)
        step, position = load_checkpoint(resume_from, transformer, optimizer)
    shard_manifest, shard_hash = load_manifest(Path(config.shards))
    stream = batches(
        Path(config.shards),
        config.batch_size,
        config.seed,
        skip=position,
        rank=dist.rank,
        world=dist.world,
        manifest=shard_manifest,
    )
    plan = None
    if config.gradient_checkpoint_blocks == AUTO and transformer.device.type == "cuda":
        first = next(stream)
        stream = itertools.chain([first], stream)  # the probe reads the first batch; training still starts with it
        generators = sample_generators(config.seed, step, [s.key for s in first])
        count, info = plan_recomputation(
            transformer,
            parameters,
            optimizer,
            config,
            lambda: (plan_step_fn or step_fn)(transformer, first, generators),
        )
        plan = {"recomputed_blocks": count, "of": len(transformer.transformer_blocks), **info}
    model = wrap_for_data_parallel(transformer, dist)
    if dist.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        truncate_log(output_dir / "log.jsonl", step)
        if plan is not None:
            write_json_atomic(output_dir / "memory_plan.json", plan)

    def next_batch():
        nonlocal position
        position += 1
        return next(stream)

    last_saved = time.monotonic()
    while step < config.steps:

        def one_batch(samples, _step=step):
            return step_fn(model, samples, sample_generators(config.seed, _step, [s.key for s in samples]))

        loss, grad_norm, logs = optimizer_step(one_batch, next_batch, parameters, optimizer, config, model)
        step += 1
        if dist.is_main:
            row = {"step": step, "time": time.time(), "loss": loss.item(), "grad_norm": grad_norm.item(), **logs}
            with open(output_dir / "log.jsonl", "a") as handle:
                handle.write(json.dumps(row) + "\n")
            if on_step is not None:
                on_step(row)
            if checkpoint_due(step, config, time.monotonic() - last_saved):
                save_checkpoint(
                    output_dir / f"step-{step:06d}", transformer, optimizer, step, position, config, lora, shard_hash
                )
                last_saved = time.monotonic()
        if stop_after is not None and step >= stop_after:
            break
    dist.barrier()  # the other ranks return the checkpoint rank 0 has finished writing
    return latest_checkpoint(output_dir)


def train(config: SFTConfig, identity_factory=None, stop_after: int | None = None, on_step=None) -> Path:
    """Run (or resume) SFT, on one process or under torchrun; returns the final checkpoint folder."""
    dist = setup_distributed()
    if dist.device is not None:
        config.device = dist.device
    torch.manual_seed(config.seed)
    pipeline = load_generator(config)
    cache = EncodingCache(pipeline, config)
    if identity_factory is None and config.face_pack_dir:
        identity_factory = IdentityLoss
    identity = identity_factory(pipeline, config) if identity_factory else None
    # The ID path's memory only counts when lambda(t) > 0; the plan must hold a step where every sample takes it.
    worst = replace(config, modulation="constant")
    return run_loop(
        config,
        pipeline,
        lambda model, samples, generators: sft_step(model, pipeline, cache, samples, config, generators, identity),
        stop_after,
        dist,
        on_step,
        plan_step_fn=lambda model, samples, generators: sft_step(
            model, pipeline, cache, samples, worst, generators, identity
        ),
    )


def main() -> None:
    run_command("SFT of the generator with the modulated identity loss.", SFTConfig, train, "checkpoint")


if __name__ == "__main__":
    main()
