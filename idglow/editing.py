"""One edit with QwenImageEditPlus at reference sizes chosen per call.

diffusers' ``QwenImageEditPlusPipeline.__call__`` resizes every reference portrait to two pixel
budgets read from its module constants (``VAE_IMAGE_SIZE``, about 1 MP, and
``CONDITION_IMAGE_SIZE``, 384²) and takes no argument for them. Patching those constants would
change every pipeline in the process, so ``edit`` reproduces the pipeline's ``__call__`` for one
prompt from the pipeline's own methods, with the budgets as an argument (``ReferenceBudget``).
Training encodes its references with the same ``prepare_references`` and ``encode_references``,
so a LoRA learns from exactly the inputs inference gives it.

``edit`` is three steps: ``encode_job`` (the prompt embeddings and reference latents every
candidate of a job shares), ``denoise`` (one candidate's noise and sampling loop) and
``decode``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import (
    calculate_dimensions,
    calculate_shift,
    retrieve_timesteps,
)
from PIL import Image

# One entry of the transformer's ``img_shapes``: (frames, token rows, token columns).
TokenShape = tuple[int, int, int]


@dataclass(frozen=True)
class ReferenceBudget:
    """The pixel budgets each reference portrait is resized to, keeping its aspect ratio: for the
    VAE (its latents sit beside the target's tokens) and for the text encoder's vision input."""

    vae_pixels: int
    condition_pixels: int

    @classmethod
    def of_profile(cls, profile) -> ReferenceBudget:
        """A profile's budgets (``reference_pixels``, ``condition_pixels``): their one source, for
        generation and training alike."""
        return cls(profile.reference_pixels, profile.condition_pixels)


@dataclass
class PreparedReferences:
    """The references resized as the pipeline's step 3 resizes them."""

    condition_images: list[Image.Image]  # for the text encoder, at the condition budget
    vae_images: list[torch.Tensor]  # (1, 3, 1, h, w) in [-1, 1], at the VAE budget
    vae_sizes: list[tuple[int, int]]  # (width, height) of each VAE image

    def token_shapes(self, vae_scale_factor: int) -> list[TokenShape]:
        """The token grid of each reference (the VAE's factor, then 2x2 packing), as ``img_shapes`` lists it."""
        step = vae_scale_factor * 2
        return [(1, height // step, width // step) for width, height in self.vae_sizes]


@dataclass
class EditConditioning:
    """What every candidate of one job shares, computed once: the prompt's embeddings (and the
    negative prompt's under true CFG), the packed reference latents and their token grids."""

    prompt_embeds: torch.Tensor
    prompt_mask: torch.Tensor | None
    negative_embeds: torch.Tensor | None  # None: no true CFG
    negative_mask: torch.Tensor | None
    reference_latents: torch.Tensor  # (1, R, 4C)
    reference_shapes: list[TokenShape]


def reference_dimensions(width: int, height: int, pixels: int) -> tuple[int, int]:
    """(width, height) of an image of ``width`` x ``height`` resized to about ``pixels`` pixels at
    its aspect ratio, each side rounded to a multiple of 32: diffusers' own rule, so training and
    inference cannot drift apart."""
    return calculate_dimensions(pixels, width / height)


def prepare_references(images: Sequence[Image.Image], budget: ReferenceBudget, image_processor) -> PreparedReferences:
    """Resize each reference for the text encoder and the VAE with the pipeline's
    ``VaeImageProcessor`` (its resampling and normalisation), as ``__call__``'s step 3 does."""
    conditions, vae_images, vae_sizes = [], [], []
    for image in images:
        condition_width, condition_height = reference_dimensions(*image.size, budget.condition_pixels)
        vae_width, vae_height = reference_dimensions(*image.size, budget.vae_pixels)
        conditions.append(image_processor.resize(image, condition_height, condition_width))
        vae_images.append(image_processor.preprocess(image, vae_height, vae_width).unsqueeze(2))
        vae_sizes.append((vae_width, vae_height))
    return PreparedReferences(conditions, vae_images, vae_sizes)


def encode_references(
    pipeline, vae_images: Sequence[torch.Tensor], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Packed, normalised reference latents (1, R, 4C) for a batch of one: the image branch of
    the pipeline's ``prepare_latents`` (the posterior's mode, so no noise is drawn)."""
    packed = []
    for image in vae_images:
        latents = pipeline._encode_vae_image(image=image.to(device=device, dtype=dtype), generator=None)
        _, channels, _, height, width = latents.shape
        packed.append(pipeline._pack_latents(latents, 1, channels, height, width))
    return torch.cat(packed, dim=1)


def encode_job(
    pipeline,
    references: Sequence[Image.Image],
    prompt: str,
    *,
    budget: ReferenceBudget,
    negative_prompt: str | None = None,
    true_cfg_scale: float = 1.0,
    max_sequence_length: int = 512,
) -> EditConditioning:
    """The conditioning of one job, shared by all its candidates; the negative prompt is encoded
    only when true CFG is on (``true_cfg_scale > 1`` and a negative prompt), as in the pipeline."""
    device = pipeline._execution_device
    prepared = prepare_references(references, budget, pipeline.image_processor)
    embeds, mask = pipeline.encode_prompt(
        image=prepared.condition_images, prompt=prompt, device=device, max_sequence_length=max_sequence_length
    )
    negative_embeds = negative_mask = None
    if true_cfg_scale > 1 and negative_prompt is not None:
        negative_embeds, negative_mask = pipeline.encode_prompt(
            image=prepared.condition_images,
            prompt=negative_prompt,
            device=device,
            max_sequence_length=max_sequence_length,
        )
    latents = encode_references(pipeline, prepared.vae_images, device, embeds.dtype)
    return EditConditioning(
        embeds, mask, negative_embeds, negative_mask, latents, prepared.token_shapes(pipeline.vae_scale_factor)
    )


def timesteps_for(pipeline, steps: int, image_tokens: int, device: torch.device) -> torch.Tensor:
    """The scheduler's timesteps: the pipeline's sigmas, shifted for ``image_tokens`` target tokens."""
    config = pipeline.scheduler.config
    mu = calculate_shift(
        image_tokens,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", 1.15),
    )
    sigmas = np.linspace(1.0, 1 / steps, steps)
    timesteps, _ = retrieve_timesteps(pipeline.scheduler, steps, device, sigmas=sigmas, mu=mu)
    return timesteps


def true_cfg(conditional: torch.Tensor, unconditional: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance rescaled to the conditional prediction's norm per token (the pipeline's rule)."""
    combined = unconditional + scale * (conditional - unconditional)
    return combined * (torch.norm(conditional, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True))


def _velocity(
    pipeline,
    latents: torch.Tensor,
    conditioning: EditConditioning,
    embeds: torch.Tensor,
    mask: torch.Tensor | None,
    timestep: torch.Tensor,
    img_shapes: list[list[TokenShape]],
    cache_context: str,
) -> torch.Tensor:
    """The transformer's prediction for the target tokens, references appended after them."""
    with pipeline.transformer.cache_context(cache_context):
        out = pipeline.transformer(
            hidden_states=torch.cat([latents, conditioning.reference_latents], dim=1),
            timestep=timestep / 1000,
            guidance=None,
            encoder_hidden_states_mask=mask,
            encoder_hidden_states=embeds,
            img_shapes=img_shapes,
            attention_kwargs={},
            return_dict=False,
        )[0]
    return out[:, : latents.size(1)]


def denoise(
    pipeline,
    conditioning: EditConditioning,
    *,
    height: int,
    width: int,
    num_inference_steps: int,
    true_cfg_scale: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One candidate's packed latents (1, T, 4C): its noise from ``generator``, then the sampling loop."""
    if pipeline.transformer.config.guidance_embeds:
        raise NotImplementedError("guidance-distilled transformers (guidance_embeds) are not supported")
    device, dtype = pipeline._execution_device, conditioning.prompt_embeds.dtype
    channels = pipeline.transformer.config.in_channels // 4
    latents, _ = pipeline.prepare_latents(None, 1, channels, height, width, dtype, device, generator)
    step = pipeline.vae_scale_factor * 2
    img_shapes = [[(1, height // step, width // step), *conditioning.reference_shapes]]
    timesteps = timesteps_for(pipeline, num_inference_steps, latents.shape[1], device)
    pipeline.scheduler.set_begin_index(0)
    for t in timesteps:
        timestep = t.expand(latents.shape[0]).to(latents.dtype)
        velocity = _velocity(
            pipeline,
            latents,
            conditioning,
            conditioning.prompt_embeds,
            conditioning.prompt_mask,
            timestep,
            img_shapes,
            "cond",
        )
        if conditioning.negative_embeds is not None:
            negative = _velocity(
                pipeline,
                latents,
                conditioning,
                conditioning.negative_embeds,
                conditioning.negative_mask,
                timestep,
                img_shapes,
                "uncond",
            )
            velocity = true_cfg(velocity, negative, true_cfg_scale)
        latents = pipeline.scheduler.step(velocity, t, latents, return_dict=False)[0]
    return latents


def decode(pipeline, latents: torch.Tensor, height: int, width: int) -> list[Image.Image]:
    """Packed latents -> PIL images through the VAE (de-normalised with its latents_mean/std)."""
    vae = pipeline.vae
    latents = pipeline._unpack_latents(latents, height, width, pipeline.vae_scale_factor).to(vae.dtype)
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
    inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
    latents = latents / inverse_std + mean  # written as the pipeline writes it, so the pixels match bit for bit
    image = vae.decode(latents, return_dict=False)[0][:, :, 0]
    return pipeline.image_processor.postprocess(image, output_type="pil")


@torch.no_grad()
def edit_candidates(
    pipeline,
    references: Sequence[Image.Image],
    prompt: str,
    *,
    budget: ReferenceBudget,
    height: int,
    width: int,
    num_inference_steps: int,
    generators: Sequence[torch.Generator | None],
    true_cfg_scale: float = 1.0,
    negative_prompt: str | None = None,
    max_sequence_length: int = 512,
) -> list[Image.Image]:
    """One image per generator for one job: the prompt and references are encoded once and
    reused for every candidate (lossless: each image equals ``edit`` with its own generator, since
    encoding draws no random numbers). ``height`` and ``width`` are rounded down to whole packed
    latent tokens (multiples of 16) as the pipeline rounds them."""
    step = pipeline.vae_scale_factor * 2
    height, width = height // step * step, width // step * step
    conditioning = encode_job(
        pipeline,
        references,
        prompt,
        budget=budget,
        negative_prompt=negative_prompt,
        true_cfg_scale=true_cfg_scale,
        max_sequence_length=max_sequence_length,
    )
    images = []
    for generator in generators:
        latents = denoise(
            pipeline,
            conditioning,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            true_cfg_scale=true_cfg_scale,
            generator=generator,
        )
        images.append(decode(pipeline, latents, height, width)[0])
    pipeline.maybe_free_model_hooks()
    return images


def edit(
    pipeline,
    references: Sequence[Image.Image],
    prompt: str,
    *,
    generator: torch.Generator | None = None,
    **settings,
) -> Image.Image:
    """``pipeline(image=references, prompt=prompt, ...).images[0]`` with the references resized to
    ``settings["budget"]`` instead of the pipeline module's constants (``edit_candidates`` for one
    generator; the same keyword arguments)."""
    return edit_candidates(pipeline, references, prompt, generators=[generator], **settings)[0]


def skip_unused_logits(text_encoder: torch.nn.Module) -> torch.nn.Module:
    """Make ``text_encoder`` (a Qwen2.5-VL for generation, as the pipeline holds it) compute its
    vocabulary head on the last token only. The pipeline reads the last hidden state, never the
    logits, and the 152,064-way head over every prompt token is most of an encoding's work at
    one text block and about 0.8 TFLOP per prompt at full depth. Hidden states are unchanged.
    Set per model instance through torch's forward pre-hook, never on the class."""

    def keep_last_logits(module, args, kwargs):
        return args, {**kwargs, "logits_to_keep": 1}

    text_encoder.register_forward_pre_hook(keep_last_logits, with_kwargs=True)
    return text_encoder
