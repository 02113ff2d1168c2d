"""One edit with QwenImageEditPlus at reference sizes chosen per call.

diffusers' ``QwenImageEditPlusPipeline.__call__`` resizes every reference portrait to two pixel
budgets read from its module constants (``VAE_IMAGE_SIZE``, about 1 MP, and
``CONDITION_IMAGE_SIZE``, 384²) and takes no argument for them. Patching those constants would
change every pipeline in the process, so ``edit`` reproduces the pipeline's ``__call__`` for one
prompt from the pipeline's own methods, with the budgets as an argument (``ReferenceBudget``).
Training encodes its references with the same ``prepare_references`` and ``encode_references``,
so a LoRA learns from exactly the inputs inference gives it.

``edit`` is three steps: ``encode_job`` (the prompt embeddings and reference latents every
candidate of a job shares), ``denoise`` (the sampling loop for a batch of candidates, each from
its own generator's noise, true CFG's two passes in one transformer call) and ``decode``.
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


TextRows = tuple[torch.Tensor, torch.Tensor | None]  # prompt embeddings (rows, L, D) and their mask


def _padded(parts: Sequence[TextRows], count: int) -> TextRows:
    """``count`` rows of each (1, L, D) part, the shorter ones zero-padded at their end and masked."""
    length = max(embeds.size(1) for embeds, _ in parts)
    batch_embeds, batch_masks = [], []
    for embeds, mask in parts:
        if mask is None:
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        padding = length - embeds.size(1)
        batch_embeds.append(torch.nn.functional.pad(embeds, (0, 0, 0, padding)).expand(count, -1, -1))
        batch_masks.append(torch.nn.functional.pad(mask, (0, padding)).expand(count, -1))
    mask = torch.cat(batch_masks)
    return torch.cat(batch_embeds), None if mask.all() else mask


def text_batch(conditioning: EditConditioning, count: int) -> TextRows:
    """The prompt's embeddings for ``count`` candidates, then the negative prompt's under true CFG,
    in one batch: the shorter prompt is zero-padded at its end and masked out. Padding at the end
    keeps every real token's text RoPE position, and the transformer's joint attention never reads
    a masked key, so each candidate's image tokens see what an unpadded call shows them. The mask
    is None when nothing is padded, as ``encode_prompt`` returns it for a full prompt."""
    parts = [(conditioning.prompt_embeds, conditioning.prompt_mask)]
    if conditioning.negative_embeds is not None:
        parts.append((conditioning.negative_embeds, conditioning.negative_mask))
    return _padded(parts, count)


def text_batches(conditioning: EditConditioning, count: int, cfg_in_one_call: bool = True) -> list[TextRows]:
    """The text rows of each transformer call of one step: one call (``text_batch``), or under
    true CFG with ``cfg_in_one_call`` off, the prompt's rows and the negative prompt's rows in two
    calls, each unpadded. Two calls need no padding mask, and on CUDA a mask keeps SDPA off its
    flash kernel; which of the two is faster is the GPU benchmark's question."""
    if cfg_in_one_call or conditioning.negative_embeds is None:
        return [text_batch(conditioning, count)]
    return [
        _padded([(conditioning.prompt_embeds, conditioning.prompt_mask)], count),
        _padded([(conditioning.negative_embeds, conditioning.negative_mask)], count),
    ]


def _velocity(
    pipeline,
    latents: torch.Tensor,
    conditioning: EditConditioning,
    embeds: torch.Tensor,
    mask: torch.Tensor | None,
    timestep: torch.Tensor,
    img_shapes: list[TokenShape],
    cache_context: str,
) -> torch.Tensor:
    """The transformer's prediction for the target tokens of every row of ``embeds`` (candidates'
    prompt rows and, under true CFG, their negative rows), in one call; each row's references
    are appended after its target tokens, as in the pipeline."""
    rows = embeds.size(0)
    latents = latents.repeat(rows // latents.size(0), 1, 1)
    references = conditioning.reference_latents.expand(rows, -1, -1)
    with pipeline.transformer.cache_context(cache_context):
        out = pipeline.transformer(
            hidden_states=torch.cat([latents, references], dim=1),
            timestep=timestep.expand(rows) / 1000,
            guidance=None,
            encoder_hidden_states_mask=mask,
            encoder_hidden_states=embeds,
            img_shapes=[img_shapes] * rows,
            attention_kwargs={},
            return_dict=False,
        )[0]
    return out[:, : latents.size(1)]


def initial_noise(
    pipeline,
    generators: Sequence[torch.Generator | None],
    *,
    height: int,
    width: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Packed noise (K, T, 4C), one row per generator: the pipeline's ``prepare_latents`` with the
    list of generators, whose ``randn_tensor`` draws each row from its own generator at batch
    shape 1, so row k is the noise of a one-image call with generator k. Without generators the
    rows come from torch's global generator, as the pipeline draws them."""
    if any(generator is None for generator in generators):
        if not all(generator is None for generator in generators):
            raise ValueError("give every candidate a generator, or none of them")
        generator = None
    else:
        generator = list(generators)
    channels = pipeline.transformer.config.in_channels // 4
    device = pipeline._execution_device
    latents, _ = pipeline.prepare_latents(None, len(generators), channels, height, width, dtype, device, generator)
    return latents


def denoise(
    pipeline,
    conditioning: EditConditioning,
    noise: torch.Tensor,
    *,
    height: int,
    width: int,
    num_inference_steps: int,
    true_cfg_scale: float,
    cfg_in_one_call: bool = True,
) -> torch.Tensor:
    """The sampling loop for a batch of candidates from their packed ``noise`` (n, T, 4C): one
    transformer call per step for all of them, their conditional and unconditional passes
    together under true CFG (or in two calls: ``text_batches``), then the scheduler's step on the
    whole batch."""
    if pipeline.transformer.config.guidance_embeds:
        raise NotImplementedError("guidance-distilled transformers (guidance_embeds) are not supported")
    latents = noise
    calls = text_batches(conditioning, latents.size(0), cfg_in_one_call)
    # diffusers' cache hooks key their state by context: one name per kind of call
    one_call = "cond" if conditioning.negative_embeds is None else "cond_uncond"
    contexts = [one_call] if len(calls) == 1 else ["cond", "uncond"]
    step = pipeline.vae_scale_factor * 2
    img_shapes = [(1, height // step, width // step), *conditioning.reference_shapes]
    timesteps = timesteps_for(pipeline, num_inference_steps, latents.shape[1], latents.device)
    pipeline.scheduler.set_begin_index(0)
    for t in timesteps:
        timestep = t.expand(1).to(latents.dtype)
        velocity = torch.cat(
            [
                _velocity(pipeline, latents, conditioning, embeds, mask, timestep, img_shapes, context)
                for (embeds, mask), context in zip(calls, contexts, strict=True)
            ]
        )
        if conditioning.negative_embeds is not None:
            conditional, unconditional = velocity.chunk(2)
            velocity = true_cfg(conditional, unconditional, true_cfg_scale)
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
    candidates_batch: int = 4,
    cfg_in_one_call: bool = True,
) -> list[Image.Image]:
    """One image per generator for one job: the prompt and references are encoded once and
    reused for every candidate (encoding draws no random numbers), and up to
    ``candidates_batch`` candidates are denoised together, each from its own generator's noise,
    with true CFG's two passes in the same transformer call (a batch of 2 x ``candidates_batch``
    rows then: the knob bounds the activations' memory; ``cfg_in_one_call=False`` makes the two
    passes two calls of ``candidates_batch`` rows each, see ``text_batches``). Each image matches
    the pipeline's call with its own generator to float rounding (batched matrix products and
    masked attention may sum in another order). ``height`` and ``width`` are rounded down to
    whole packed latent tokens (multiples of 16) as the pipeline rounds them."""
    if candidates_batch < 1:
        raise ValueError(f"candidates_batch must be at least 1, not {candidates_batch}")
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
    noise = initial_noise(pipeline, generators, height=height, width=width, dtype=conditioning.prompt_embeds.dtype)
    images = []
    for chunk in noise.split(candidates_batch):
        latents = denoise(
            pipeline,
            conditioning,
            chunk,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            true_cfg_scale=true_cfg_scale,
            cfg_in_one_call=cfg_in_one_call,
        )
        # one image at a time through the VAE: its 1 MP activations are the largest of the step
        images.extend(decode(pipeline, row, height, width)[0] for row in latents.split(1))
        # what the pipeline does after each call; it also resets a step cache's state, which
        # must not carry one batch's residuals into the next
        pipeline.maybe_free_model_hooks()
    return images


def compile_repeated_blocks(pipeline, **compile_options) -> None:
    """``torch.compile`` the transformer's repeated block (diffusers' regional compilation: one
    block class compiled once, reused by all 60), leaving the rest eager. Opt-in: the first call
    at each new shape pays the compilation."""
    pipeline.transformer.compile_repeated_blocks(**compile_options)


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
