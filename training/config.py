"""The settings the training loop reads, shared by SFT and DPO (``training.loop``).

``SFTConfig`` (training.sft) and ``DPOConfig`` (training.dpo) add their loss's own fields to
``RunConfig``. A config is JSON with the class's fields (``python -m training.sft --config``),
is written whole into every checkpoint's manifest, and is Dagster run config (assets/training.py
builds the run config classes from the dataclass fields and shows ``FIELD_HELP`` beside them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from idglow.editing import ReferenceBudget

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
class RunConfig:
    """Every knob of the loop: the model and data, the optimiser, t sampling, checkpoints, speed."""

    generator_dir: str
    shards: str
    output_dir: str
    steps: int = 10  # optimizer steps
    batch_size: int = 1
    resolution: int = 64  # target side in pixels
    # The reference budgets (reference_budget): the VAE's is the square of this side, the text
    # encoder's vision input's is condition_pixels; inference resizes references with the same ones.
    reference_resolution: int = 64
    condition_pixels: int = 56 * 56
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    gradient_accumulation: int = 1  # micro-batches per optimizer step
    lora_rank: int = 4
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    # Content fingerprints of model folders above, by field (the Dagster assets fill them): they
    # stand for those folders' paths in the run key and the resume check (training.checkpoints.location_fields).
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
    def from_file(cls, path: Path):
        return cls(**json.loads(Path(path).read_text()))


# What the launchpad shows beside each run-config field (assets/training.py); docs/training.md
# has the same table with the reasons behind the defaults. SFT and DPO add their own fields' help.
FIELD_HELP = {
    "steps": "optimizer steps of the run",
    "batch_size": "samples per micro-batch (per rank under torchrun)",
    "learning_rate": "AdamW learning rate of the LoRA weights",
    "weight_decay": "AdamW weight decay",
    "max_grad_norm": "gradient clipping norm",
    "gradient_accumulation": "micro-batches per optimizer step",
    "lora_rank": "LoRA rank r (alpha = r)",
    "lora_targets": "transformer module names that get a LoRA",
    "logit_mean": "mean of the logit-normal t sampling",
    "logit_std": "standard deviation of the logit-normal t sampling",
    "resolution_shift": "move t by the scheduler's resolution shift",
    "checkpoint_every": "steps between checkpoints (the last step always gets one)",
    "checkpoint_every_minutes": "also checkpoint when this many minutes passed since the last one (null: steps only)",
    "gradient_checkpoint_blocks": "transformer blocks recomputed in backward: a count (-1: all), or auto (the fewest "
    "that fit memory_fraction of the GPU, planned on the first micro-batch; 0 on the CPU)",
    "memory_fraction": "share of the GPU's memory the auto plan may fill",
    "compile": "torch.compile the repeated transformer block",
    "attention_backend": "diffusers attention backend, e.g. _native_cudnn (null: its default)",
    "encoding_cache_dir": "folder of the per-sample encodings, shared by runs (null: encodings/ beside the run folder)",
}
