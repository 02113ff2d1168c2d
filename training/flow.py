"""Rectified-flow pieces of the training step (method.md, Conventions).

x_t = (1 - t) x_0 + t eps, target u_t = eps - x_0, clean estimate x0_hat = x_t - t v. The
packing, the latent normalisation and the resolution shift are diffusers' own (the pipeline's
static methods, the VAE config, the scheduler's ``time_shift``), so training sees exactly the
token layout and the sigma axis that inference uses.
"""

from __future__ import annotations

import hashlib

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_shift


def vae_scale_factor(vae) -> int:
    """The VAE's spatial compression, as the pipeline reads it: 2 ** len(temperal_downsample)
    (8 for Qwen-Image's VAE, one downsampling per level but the last)."""
    return 2 ** len(vae.config.temperal_downsample)


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, 1, H, W) normalised latents -> (B, H/2 * W/2, 4C) tokens, as the pipeline packs them."""
    b, c, _, h, w = latents.shape
    return QwenImageEditPlusPipeline._pack_latents(latents, b, c, h, w)


def unpack(tokens: torch.Tensor, height: int, width: int, scale: int) -> torch.Tensor:
    """Tokens of an image of ``height`` x ``width`` pixels -> (B, C, 1, H/scale, W/scale)
    latents, ``scale`` the VAE's ``vae_scale_factor``."""
    return QwenImageEditPlusPipeline._unpack_latents(tokens, height, width, scale)


def _stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, device=like.device, dtype=like.dtype).view(shape)
    std = torch.tensor(vae.config.latents_std, device=like.device, dtype=like.dtype).view(shape)
    return mean, std


def encode(vae, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [-1, 1] -> normalised latents (B, C, 1, H/s, W/s), the mode of the posterior."""
    latents = vae.encode(images.unsqueeze(2)).latent_dist.mode()
    mean, std = _stats(vae, latents)
    return (latents - mean) / std


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents -> (B, 3, H, W) RGB in about [-1, 1] (with gradient)."""
    mean, std = _stats(vae, latents)
    return vae.decode(latents * std + mean, return_dict=False)[0][:, :, 0]


Generators = torch.Generator | list[torch.Generator]


def sample_generators(seed: int, step: int, keys: list[str]) -> list[torch.Generator]:
    """One generator per sample, seeded by (run seed, step, sample key). The t and noise a sample
    gets then depend on neither its batch nor its rank: N ranks equal one process on the
    concatenated batch, and a resumed run draws what the uninterrupted one drew."""
    seeds = [
        int.from_bytes(hashlib.sha256(f"{seed}:{step}:{key}".encode()).digest()[:8], "little") >> 1 for key in keys
    ]
    return [torch.Generator().manual_seed(value) for value in seeds]


def randn(shape: tuple[int, ...], generator: Generators) -> torch.Tensor:
    """Standard normals of ``shape`` (batch first); with one generator per sample, row i from the i-th."""
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator)
    return torch.stack([torch.randn(shape[1:], generator=g) for g in generator])


def sample_sigmas(
    batch: int,
    image_tokens: int,
    scheduler: FlowMatchEulerDiscreteScheduler,
    generator: Generators,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    shift: bool = True,
) -> torch.Tensor:
    """Logit-normal times, moved by the scheduler's resolution-dependent shift (as inference does).

    The returned sigma is what the network sees and what lambda(t) is evaluated at.
    """
    u = torch.sigmoid(randn((batch,), generator) * logit_std + logit_mean)
    if not shift:
        return u
    config = scheduler.config
    mu = calculate_shift(
        image_tokens, config.base_image_seq_len, config.max_image_seq_len, config.base_shift, config.max_shift
    )
    return scheduler.time_shift(mu, 1.0, u)


def noisy(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise


def predict_velocity(
    transformer,
    x_t: torch.Tensor,
    references: torch.Tensor,
    prompt_embeds: torch.Tensor,
    prompt_mask: torch.Tensor | None,
    sigma: torch.Tensor,
    shapes: list[tuple[int, int, int]],
) -> torch.Tensor:
    """v(x_t, t, c) for the target tokens: references appended after them, ``zero_cond_t`` as in
    the pipeline, ``timestep`` = sigma in [0, 1]; ``shapes`` = [(1, h, w) target, then each reference]."""
    out = transformer(
        hidden_states=torch.cat([x_t, references], dim=1),
        timestep=sigma.to(x_t.dtype),
        encoder_hidden_states=prompt_embeds,
        encoder_hidden_states_mask=prompt_mask,
        img_shapes=[shapes] * x_t.shape[0],
        return_dict=False,
    )[0]
    return out[:, : x_t.shape[1]]


def clean_estimate(x_t: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x0_hat = x_t - t v."""
    return x_t - sigma.view(-1, *([1] * (x_t.dim() - 1))).to(x_t.dtype) * velocity


def flow_matching_loss(
    velocity: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, token_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample mean of (v - u_t)^2 over the target tokens (Eq. 1's L_FM), shape (B,).
    ``token_weights`` (B, T), if given, weighs each token's squared error (mean one per sample
    leaves the scale of the loss unchanged)."""
    error = (velocity.float() - (noise - x0).float()) ** 2
    if token_weights is not None:
        error = error * token_weights.to(error).unsqueeze(-1)
    return error.flatten(1).mean(dim=1)
