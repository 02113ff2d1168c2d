"""idglow.editing: the pipeline's own generation with reference budgets chosen per call.

At diffusers' default budgets ``edit`` gives the pixels ``pipeline(...)`` gives, bit for bit
(max abs difference 0), with and without true CFG; a smaller budget resizes the references as
diffusers' ``calculate_dimensions`` says. One tiny reference keeps the default-budget runs
affordable: diffusers resizes every reference to about 1 MP whatever its size, and that VAE
encode is most of the roughly 25 s this module takes on one CPU thread.
"""

import numpy as np
import pytest
import torch
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus
from PIL import Image

from idglow.editing import ReferenceBudget, encode_job, prepare_references, reference_dimensions

DIFFUSERS_DEFAULTS = ReferenceBudget(1024 * 1024, 384 * 384)
PROMPT = "Two friends smiling in a park."


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
    difference = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(expected, dtype=np.int16))
    assert difference.max() == 0


def test_a_small_budget_gives_small_references(pipeline):
    square, wide = Image.new("RGB", (96, 96), "red"), Image.new("RGB", (128, 64), "blue")
    budget = ReferenceBudget(64 * 64, 56 * 56)
    prepared = prepare_references([square, wide], budget, pipeline.image_processor)
    assert [image.size for image in prepared.condition_images] == [(64, 64), (64, 32)]
    assert [tuple(t.shape) for t in prepared.vae_images] == [(1, 3, 1, 64, 64), (1, 3, 1, 32, 96)]
    assert prepared.vae_sizes == [(64, 64), (96, 32)]
    conditioning = encode_job(pipeline, [square, wide], PROMPT, budget=budget)
    assert conditioning.reference_shapes == [(1, 4, 4), (1, 2, 6)]
    assert conditioning.reference_latents.shape == (1, 4 * 4 + 2 * 6, 64)
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


def test_candidates_of_one_job_share_its_encoding_and_equal_single_edits(pipeline):
    from idglow.editing import edit, edit_candidates

    references = [Image.new("RGB", (48, 48), (90, 140, 200)), Image.new("RGB", (64, 48), (200, 90, 60))]
    budget = ReferenceBudget(64 * 64, 56 * 56)
    settings = {"budget": budget, "height": 64, "width": 64, "num_inference_steps": 2, "true_cfg_scale": 4.0}
    settings["negative_prompt"] = " "
    together = edit_candidates(
        pipeline, references, PROMPT, generators=[torch.Generator().manual_seed(s) for s in (3, 4)], **settings
    )
    alone = [edit(pipeline, references, PROMPT, generator=torch.Generator().manual_seed(s), **settings) for s in (3, 4)]
    for a, b in zip(together, alone, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(together[0]), np.asarray(together[1]))  # their own seeds


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
