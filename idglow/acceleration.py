"""The generator's lossy accelerations, each off unless a setting turns it on.

Three options (``Acceleration``), applied to a loaded pipeline by ``apply_acceleration``:

- ``step_cache_threshold``: diffusers' First Block Cache on the transformer (a DBCache-style
  step cache). Every step runs the first block; when its residual moved by less than the
  threshold since the last full step, the other blocks' residual from that step is reused.
- ``fp8``: torchao's float8 on the transformer's Linear layers, with dynamic-activation float8
  (FP8 weights and activations, FP8 matmuls). It needs CUDA with compute capability 8.9 or more
  (Ada, Hopper or newer); anywhere else it is refused with that reason, never silently skipped.
  torchao is the optional extra ``idglow[fp8]``, not a core dependency: diffusers imports it
  whenever it is installed, in every process that loads a pipeline (about 2 to 4 s each on the
  2-core test machine), so only the machines that use FP8 install it.
- ``distilled_lora``: a few-step distilled LoRA the user supplies (a local folder or
  safetensors file, never downloaded), loaded with diffusers' ``load_lora_weights`` as the
  adapter ``distilled`` beside any adapter already active. It is run with its own steps and
  true-CFG scale (``Acceleration.sampling``): that is the point of a distillation.

What each costs in the benchmark's FaceSim and Aesthetic is what benchmarks/generation.py's
lossy rows print (docs/benchmarks/README.md). The options are part of
``idglow.generation.GenerationSettings``, so an accelerated image's recorded settings (and their
hash) never equal a lossless one's.
"""

from __future__ import annotations

import importlib.util
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

FP8_REQUIREMENT = "CUDA with compute capability ≥ 8.9 (Ada, Hopper or newer)"
DISTILLED_ADAPTER = "distilled"


class AccelerationError(RuntimeError):
    """An option cannot run here, or a pipeline already carries other options."""


@dataclass(frozen=True)
class Acceleration:
    """The lossy options, all off by default (the profile's ``step_cache_threshold``,
    ``fp8_transformer``, ``distilled_lora``, ``distilled_steps``, ``distilled_true_cfg_scale``)."""

    step_cache_threshold: float | None = None  # None: off; 0 reuses nothing (lossless-equivalent)
    fp8: bool = False
    distilled_lora: str | None = None  # a LoRA folder or .safetensors file; None: off
    distilled_steps: int = 8  # the steps the distilled LoRA is run with
    distilled_true_cfg_scale: float = 1.0  # and its true-CFG scale (1: no guidance pass)

    def __post_init__(self):
        if self.step_cache_threshold is not None and self.step_cache_threshold < 0:
            raise ValueError(f"step_cache_threshold must be at least 0, not {self.step_cache_threshold}")
        if self.distilled_steps < 2:  # one step's sigma schedule divides zero by zero (shift_terminal)
            raise ValueError(f"distilled_steps must be at least 2, not {self.distilled_steps}")
        if self.distilled_true_cfg_scale < 1:
            raise ValueError(f"distilled_true_cfg_scale must be at least 1, not {self.distilled_true_cfg_scale}")

    @classmethod
    def of_profile(cls, profile) -> Acceleration:
        """A profile's options: their one source, for the candidates and the benchmark alike (the
        LoRA's path made absolute, as the workers that load it may start elsewhere)."""
        lora = profile.distilled_lora
        return cls(
            profile.step_cache_threshold,
            profile.fp8_transformer,
            None if lora is None else str(Path(lora).absolute()),
            profile.distilled_steps,
            profile.distilled_true_cfg_scale,
        )

    @property
    def lossless(self) -> bool:
        return self.step_cache_threshold is None and not self.fp8 and self.distilled_lora is None

    def sampling(self, steps: int, true_cfg_scale: float) -> tuple[int, float]:
        """The (steps, true-CFG scale) to sample with: the distilled LoRA's when it is on, else the
        settings' own. The one place the distilled LoRA's steps replace the profile's."""
        if self.distilled_lora is None:
            return steps, true_cfg_scale
        return self.distilled_steps, self.distilled_true_cfg_scale

    def describe(self) -> str:
        """The options on, in words (``lossless`` when none is)."""
        parts = []
        if self.step_cache_threshold is not None:
            parts.append(f"step cache {self.step_cache_threshold:g}")
        if self.fp8:
            parts.append("fp8")
        if self.distilled_lora is not None:
            parts.append(f"distilled LoRA ({self.distilled_steps} steps, CFG {self.distilled_true_cfg_scale:g})")
        return ", ".join(parts) or "lossless"


# What apply_acceleration put on each pipeline: an option cannot be taken off again (a quantized
# layer stays quantized), so a pipeline is accelerated once, and a call asking it for other
# options is refused rather than making images the settings do not describe.
_APPLIED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def applied_acceleration(pipeline) -> Acceleration:
    """The options ``apply_acceleration`` turned on for ``pipeline`` (none for a fresh one)."""
    return _APPLIED.get(pipeline, Acceleration())


def fp8_supported(device: torch.device | str) -> bool:
    """Whether torchao's dynamic-activation float8 runs on ``device``: ``FP8_REQUIREMENT``."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 9)


def apply_acceleration(pipeline, acceleration: Acceleration) -> None:
    """Turn ``acceleration``'s options on for ``pipeline`` (after it is loaded, and after any LoRA
    of its own). Nothing on: nothing is touched. Idempotent for the same options; a pipeline that
    already carries other options is refused (load a fresh one). FP8 is checked before anything
    changes, so a refused call leaves the pipeline as it was. Sample with
    ``acceleration.sampling(steps, true_cfg_scale)`` afterwards."""
    applied = applied_acceleration(pipeline)
    if applied == acceleration:
        return
    if not applied.lossless:
        raise AccelerationError(
            f"this pipeline already carries {applied.describe()}; the settings ask for {acceleration.describe()}:"
            " load a fresh pipeline"
        )
    device = next(pipeline.transformer.parameters()).device
    if acceleration.fp8 and not fp8_supported(device):
        raise AccelerationError(f"fp8_transformer needs {FP8_REQUIREMENT}; the transformer is on {device}")
    if acceleration.fp8 and importlib.util.find_spec("torchao") is None:
        raise AccelerationError("fp8_transformer needs torchao: pip install 'idglow[fp8]' (torchao==0.18.0)")
    if acceleration.distilled_lora is not None:
        load_distilled_lora(pipeline, acceleration.distilled_lora)
    if acceleration.fp8:
        quantize_fp8(pipeline.transformer)
    if acceleration.step_cache_threshold is not None:
        enable_first_block_cache(pipeline, acceleration.step_cache_threshold)
    _APPLIED[pipeline] = acceleration


def remove_acceleration(pipeline) -> None:
    """Take ``apply_acceleration``'s options off ``pipeline`` again (the step cache disabled, the
    distilled adapter deleted, the other adapters active as before), as a benchmark comparing the
    options on one pipeline needs. Float8 layers cannot be turned back: refused."""
    applied = applied_acceleration(pipeline)
    if applied.fp8:
        raise AccelerationError("this pipeline's float8 layers cannot be turned back: load a fresh pipeline")
    if applied.step_cache_threshold is not None:
        pipeline.transformer.disable_cache()
    if applied.distilled_lora is not None:
        others = [name for name in pipeline.get_active_adapters() if name != DISTILLED_ADAPTER]
        pipeline.delete_adapters(DISTILLED_ADAPTER)
        if others:
            pipeline.set_adapters(others)
    _APPLIED.pop(pipeline, None)


def enable_first_block_cache(pipeline, threshold: float = 0.05) -> None:
    """Lossy: diffusers' First Block Cache on the transformer. Every step runs the first block;
    when its residual moved by less than ``threshold`` (mean absolute change over mean absolute
    value) since the last full step, the other blocks' residual from that step is reused instead
    of running them. One decision per transformer call, so per batch of candidates;
    ``edit_candidates`` resets its state after each batch. ``pipeline.transformer.disable_cache()``
    turns it off."""
    from diffusers.hooks import FirstBlockCacheConfig

    pipeline.transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))


def load_distilled_lora(pipeline, source: str | Path) -> None:
    """Load a distilled LoRA (a folder in diffusers' LoRA format, or one .safetensors file) as the
    adapter ``distilled``, kept as an adapter (not fused), active together with any adapter the
    pipeline already had active (a trained LoRA keeps its effect)."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"distilled_lora {source!r} does not exist (a local LoRA folder or .safetensors file)")
    before = list(pipeline.get_active_adapters()) if getattr(pipeline.transformer, "peft_config", None) else []
    if path.is_file():
        pipeline.load_lora_weights(path.parent, weight_name=path.name, adapter_name=DISTILLED_ADAPTER)
    else:
        pipeline.load_lora_weights(path, adapter_name=DISTILLED_ADAPTER)
    pipeline.set_adapters([*before, DISTILLED_ADAPTER])


def quantize_fp8(transformer: torch.nn.Module) -> None:
    """torchao's dynamic-activation float8 (per-row scales) on the transformer's Linear layers
    whose sides are multiples of 16 (what FP8 matmuls take), LoRA layers left as they are."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    def eligible(module: torch.nn.Module, name: str) -> bool:
        return (
            isinstance(module, torch.nn.Linear)
            and "lora_" not in name
            and module.in_features % 16 == 0
            and module.out_features % 16 == 0
        )

    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=eligible)


def write_random_lora(
    transformer: torch.nn.Module, folder: Path, rank: int = 4, scale: float = 0.05, seed: int = 0
) -> Path:
    """A LoRA of random weights on the attention projections of ``transformer``'s blocks, saved
    in diffusers' format in ``folder``: for dry runs of the distilled-LoRA path and its tests on
    the tiny twin. It is no distillation (it only perturbs the model), and nothing is downloaded."""
    from diffusers import QwenImageEditPlusPipeline

    generator = torch.Generator().manual_seed(seed)
    targets = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0")
    layers = {}
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("transformer_blocks.") and name.endswith(targets):
            down = torch.randn(rank, module.in_features, generator=generator) * scale
            up = torch.randn(module.out_features, rank, generator=generator) * scale
            layers[f"{name}.lora_A.weight"] = down
            layers[f"{name}.lora_B.weight"] = up
    folder.mkdir(parents=True, exist_ok=True)
    QwenImageEditPlusPipeline.save_lora_weights(folder, transformer_lora_layers=layers)
    return folder
