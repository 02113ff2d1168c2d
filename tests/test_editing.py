"""idglow.editing: the pipeline's own generation with reference budgets chosen per call.

At diffusers' default budgets ``edit`` gives the pixels ``pipeline(...)`` gives: bit for bit
without true CFG, to one 8-bit level with it (the conditional and unconditional passes share
one transformer call, the shorter prompt padded and masked); a smaller budget resizes the
references as diffusers' ``calculate_dimensions`` says. One tiny reference keeps the default-budget runs
affordable: diffusers resizes every reference to about 1 MP whatever its size, and that VAE
encode is most of the roughly 45 s this module takes on one CPU thread (four stock calls).

Candidates denoised as one batch match the stock call per seed to one 8-bit level too (PSNR far
above the issue's 40 dB): batched matrix products and masked attention may round in another
order.
"""

import numpy as np
import pytest
import torch
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus
from PIL import Image

from idglow.editing import ReferenceBudget, encode_job, prepare_references, reference_dimensions
from training.flow import vae_scale_factor

DIFFUSERS_DEFAULTS = ReferenceBudget(1024 * 1024, 384 * 384)
PROMPT = "Two friends smiling in a park."


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio of two 8-bit images in dB (infinite when equal)."""
    error = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float("inf") if error == 0 else 10 * np.log10(255**2 / error)


def max_difference(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def seeded(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in seeds]


@pytest.fixture(scope="module")
def pipeline(hub):
    return hub.generator()


def test_the_hub_leaves_diffusers_reference_sizes_alone(pipeline):
    assert pipeline_qwenimage_edit_plus.VAE_IMAGE_SIZE == DIFFUSERS_DEFAULTS.vae_pixels
    assert pipeline_qwenimage_edit_plus.CONDITION_IMAGE_SIZE == DIFFUSERS_DEFAULTS.condition_pixels


@pytest.mark.parametrize("true_cfg_scale", [1.0, 4.0], ids=["no-cfg", "true-cfg"])
def test_edit_gives_the_pipelines_pixels_at_its_default_budgets(pipeline, true_cfg_scale):
    from idglow.editing import edit

    references = [Image.new("RGB", (32, 32), (200, 120, 90))]
    settings = {
        "height": 64,
        "width": 64,
        "num_inference_steps": 2,
        "true_cfg_scale": true_cfg_scale,
        "negative_prompt": " " if true_cfg_scale > 1 else None,
    }
    output = pipeline(image=references, prompt=PROMPT, generator=torch.Generator().manual_seed(7), **settings)
    expected = output.images[0]
    image = edit(
        pipeline, references, PROMPT, budget=DIFFUSERS_DEFAULTS, generator=torch.Generator().manual_seed(7), **settings
    )
    assert image.size == expected.size == (64, 64)
    assert max_difference(image, expected) <= (0 if true_cfg_scale == 1 else 1)
    assert psnr(image, expected) >= 40


def test_a_small_budget_gives_small_references(pipeline):
    square, wide = Image.new("RGB", (96, 96), "red"), Image.new("RGB", (128, 64), "blue")
    budget = ReferenceBudget(64 * 64, 56 * 56)
    prepared = prepare_references([square, wide], budget, pipeline.image_processor)
    assert [image.size for image in prepared.condition_images] == [(64, 64), (64, 32)]
    assert [tuple(t.shape) for t in prepared.vae_images] == [(1, 3, 1, 64, 64), (1, 3, 1, 32, 96)]
    assert prepared.vae_sizes == [(64, 64), (96, 32)]
    conditioning = encode_job(pipeline, [square, wide], PROMPT, budget=budget)
    patch = 2 * vae_scale_factor(pipeline.vae)  # one token per 2 x 2 latents
    shapes = [(1, 64 // patch, 64 // patch), (1, 32 // patch, 96 // patch)]
    assert conditioning.reference_shapes == shapes
    assert conditioning.reference_latents.shape == (1, sum(h * w for _, h, w in shapes), 64)
    assert conditioning.negative_embeds is None  # no true CFG asked


@pytest.mark.parametrize(
    ("size", "pixels", "expected"),
    [
        ((256, 256), 56 * 56, (64, 64)),  # 56 rounds to the nearest multiple of 32
        ((32, 32), 1024 * 1024, (1024, 1024)),  # upscaled: the budget, not the input, sets the size
        ((512, 512), 384 * 384, (384, 384)),
        ((200, 100), 64 * 64, (96, 32)),  # 2:1: 90.5 x 45.3 before rounding
        ((100, 200), 64 * 64, (32, 96)),
        ((2048, 1024), 1024 * 1024, (1440, 736)),  # 1448.2 x 724.1 before rounding
    ],
)
def test_reference_dimensions(size, pixels, expected):
    assert reference_dimensions(*size, pixels) == expected


SMALL_BUDGET = ReferenceBudget(64 * 64, 56 * 56)
TWO_PORTRAITS = (Image.new("RGB", (48, 48), (90, 140, 200)), Image.new("RGB", (64, 48), (200, 90, 60)))
LONG_NEGATIVE = "blurry, low quality, extra fingers, deformed faces, watermark, text"


def test_batched_candidates_match_the_pipelines_call_per_image(pipeline):
    """Two candidates denoised as one batch under true CFG (four transformer rows a step, the
    blank negative prompt padded to the prompt's length) against two stock calls, one per seed."""
    from idglow.editing import edit_candidates

    references = [Image.new("RGB", (32, 32), (200, 120, 90))]
    settings = {"height": 64, "width": 64, "num_inference_steps": 2, "true_cfg_scale": 4.0, "negative_prompt": " "}
    plain = [pipeline(image=references, prompt=PROMPT, generator=g, **settings).images[0] for g in seeded(3, 4)]
    batched = edit_candidates(
        pipeline, references, PROMPT, budget=DIFFUSERS_DEFAULTS, generators=seeded(3, 4), candidates_batch=2, **settings
    )
    assert [psnr(a, b) >= 40 for a, b in zip(batched, plain, strict=True)] == [True, True]
    assert [max_difference(a, b) <= 1 for a, b in zip(batched, plain, strict=True)] == [True, True]
    assert max_difference(batched[0], batched[1]) > 10  # their own seeds


@pytest.mark.parametrize("negative_prompt", [" ", LONG_NEGATIVE], ids=["prompt-longer", "negative-longer"])
def test_a_batch_of_k_candidates_equals_k_batches_of_one(pipeline, negative_prompt):
    """Batches of 1, of 2 then 1, and of 3 (and of 3 with the two CFG passes in two calls) give
    the same three images to one 8-bit level (the batched matrix products' rounding), whichever
    of the two prompts is padded."""
    from idglow.editing import edit_candidates

    settings = {"budget": SMALL_BUDGET, "height": 64, "width": 64, "num_inference_steps": 3, "true_cfg_scale": 4.0}
    by_batch = {
        size: edit_candidates(
            pipeline,
            TWO_PORTRAITS,
            "Two friends.",
            generators=seeded(3, 4, 5),
            negative_prompt=negative_prompt,
            candidates_batch=size,
            **settings,
        )
        for size in (1, 2, 3)
    }
    by_batch["two calls"] = edit_candidates(
        pipeline,
        TWO_PORTRAITS,
        "Two friends.",
        generators=seeded(3, 4, 5),
        negative_prompt=negative_prompt,
        candidates_batch=3,
        cfg_in_one_call=False,
        **settings,
    )
    for size in (2, 3, "two calls"):
        assert [max_difference(a, b) <= 1 for a, b in zip(by_batch[size], by_batch[1], strict=True)] == [True] * 3
        assert min(psnr(a, b) for a, b in zip(by_batch[size], by_batch[1], strict=True)) >= 40
    assert max_difference(by_batch[3][0], by_batch[3][1]) > 10


def test_one_candidate_without_cfg_is_the_single_edit(pipeline):
    from idglow.editing import edit, edit_candidates

    settings = {"budget": SMALL_BUDGET, "height": 64, "width": 64, "num_inference_steps": 2}
    alone = edit(pipeline, TWO_PORTRAITS, PROMPT, generator=seeded(9)[0], **settings)
    together = edit_candidates(pipeline, TWO_PORTRAITS, PROMPT, generators=seeded(9, 10), **settings)
    assert max_difference(together[0], alone) <= 1


def test_text_batch_pads_the_shorter_prompt_and_masks_its_padding(pipeline):
    from idglow.editing import text_batch, text_batches

    conditioning = encode_job(
        pipeline, TWO_PORTRAITS, "Two friends.", budget=SMALL_BUDGET, negative_prompt=LONG_NEGATIVE, true_cfg_scale=4.0
    )
    prompt_length, negative_length = conditioning.prompt_embeds.size(1), conditioning.negative_embeds.size(1)
    assert prompt_length < negative_length
    embeds, mask = text_batch(conditioning, 3)
    assert embeds.shape == (6, negative_length, conditioning.prompt_embeds.size(2))
    assert mask.sum(dim=1).tolist() == [prompt_length] * 3 + [negative_length] * 3
    assert torch.equal(embeds[0, :prompt_length], conditioning.prompt_embeds[0])
    assert torch.count_nonzero(embeds[:3, prompt_length:]) == 0  # padding: zeros, masked out
    assert torch.equal(embeds[5], conditioning.negative_embeds[0])
    (prompt_rows, prompt_mask), (negative_rows, negative_mask) = text_batches(conditioning, 3, cfg_in_one_call=False)
    assert prompt_rows.shape[:2] == (3, prompt_length) and negative_rows.shape[:2] == (3, negative_length)
    assert prompt_mask is None and negative_mask is None  # two calls: nothing padded
    assert len(text_batches(conditioning, 3)) == 1
    without_cfg = encode_job(pipeline, TWO_PORTRAITS, "Two friends.", budget=SMALL_BUDGET)
    embeds, mask = text_batch(without_cfg, 2)
    assert embeds.shape[0] == 2 and mask is None  # nothing padded: no mask, as encode_prompt gives


def test_each_candidates_noise_is_its_generators_one_image_noise(pipeline):
    from idglow.editing import initial_noise

    noise = initial_noise(pipeline, seeded(3, 4, 5), height=64, width=64, dtype=torch.float32)
    for row, generator in zip(noise, seeded(3, 4, 5), strict=True):
        alone, _ = pipeline.prepare_latents(None, 1, 16, 64, 64, torch.float32, torch.device("cpu"), generator)
        assert torch.equal(row, alone[0])
    with pytest.raises(ValueError, match="every candidate a generator"):
        initial_noise(pipeline, [seeded(3)[0], None], height=64, width=64, dtype=torch.float32)


def test_the_text_encoder_skips_the_logits_the_pipeline_never_reads(pipeline):
    """The hub's text encoder computes its vocabulary head on the last token only; its hidden
    states (what encode_prompt reads) are those of the unhooked base model."""
    encoder = pipeline.text_encoder
    ids = torch.tensor([[1, 5, 9, 12, 3]])
    with torch.no_grad():
        output = encoder(input_ids=ids, output_hidden_states=True)
        base = encoder.model(input_ids=ids, output_hidden_states=True)
    assert output.logits.shape[:2] == (1, 1)
    assert torch.equal(output.hidden_states[-1], base.hidden_states[-1])
