"""A tiny Qwen-Image-Edit-2511 twin: the real pipeline class with miniature components.

``QwenImageEditPlusPipeline`` with a two-block ``QwenImageTransformer2DModel`` (``zero_cond_t``
on, as in 2511), a small ``AutoencoderKLQwenImage`` (z_dim 16, the real latent width), the tiny
Qwen2.5-VL text encoder, and the real scheduler configuration. Saved with ``save_pretrained``,
so it loads through the same ``from_pretrained`` call as the real weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImageEditPlusPipeline,
    QwenImageTransformer2DModel,
)

from idglow.models.tiny_qwen_vl import build_model, build_processor, build_tokenizer

# The scheduler configuration Qwen-Image-Edit ships with (dynamic, resolution-dependent shift).
QWEN_IMAGE_SCHEDULER_CONFIG = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}


TINY_TRANSFORMER_CONFIG = {
    "patch_size": 2,
    "in_channels": 64,
    "out_channels": 16,
    "num_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "axes_dims_rope": (4, 6, 6),
    "zero_cond_t": True,
}
TINY_VAE_CONFIG = {
    "base_dim": 24,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
    "latents_mean": [0.0] * 16,
    "latents_std": [1.0] * 16,
}


def build_generator(
    seed: int,
    tokenizer,
    processor,
    text_encoder,
    transformer_config: dict,
    vae_config: dict,
    dtype: torch.dtype = torch.float32,
) -> QwenImageEditPlusPipeline:
    """The pipeline around ``text_encoder`` with a transformer and VAE of the given configs, random
    weights fixed by ``seed``; the transformer reads the text encoder's hidden width."""
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLQwenImage(**vae_config).to(dtype)
    return assemble_pipeline(seed, tokenizer, processor, text_encoder, transformer_config, vae, dtype)


def assemble_pipeline(
    seed: int,
    tokenizer,
    processor,
    text_encoder,
    transformer_config: dict,
    vae: AutoencoderKLQwenImage,
    dtype: torch.dtype = torch.float32,
) -> QwenImageEditPlusPipeline:
    """The pipeline around ``text_encoder`` and ``vae`` with a new transformer of
    ``transformer_config`` (random weights fixed by ``seed``) and Qwen-Image's scheduler."""
    torch.manual_seed(seed + 1)
    transformer = QwenImageTransformer2DModel(
        joint_attention_dim=text_encoder.config.text_config.hidden_size, **transformer_config
    ).to(dtype)
    return QwenImageEditPlusPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER_CONFIG),
        vae=vae.eval(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=processor,
        transformer=transformer.eval(),
    )


def build_tiny_generator(seed: int) -> QwenImageEditPlusPipeline:
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    text_encoder = build_model(tokenizer, seed)
    return build_generator(seed, tokenizer, processor, text_encoder, TINY_TRANSFORMER_CONFIG, TINY_VAE_CONFIG)


def write_tiny_generator(folder: Path, seed: int) -> Path:
    build_tiny_generator(seed).save_pretrained(folder)
    return folder
