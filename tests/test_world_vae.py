"""The world's VAE builder (idglow.models.world_vae) on a tiny recipe: a few steps at 32 px."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLQwenImage
from safetensors.torch import load_file

from idglow.models.tiny import STAMP_FILE
from idglow.models.world_vae import (
    COMMITTED_FOLDER,
    COMMITTED_RECIPE,
    RECIPE_VERSION,
    WorldVAEConfig,
    build_world_vae,
    draw_world_image,
    face_mask,
    image_convolutions,
    init_world_vae,
    reconstruct,
    reconstruction_loss,
    stamp,
    to_tensor,
)

pytestmark = pytest.mark.slow  # trains two tiny models (about 20 s of one CPU thread)

TINY = WorldVAEConfig(seed=3, size=32, steps=40, batch_size=4, base_dim=8, warmup_steps=5, stats_images=8)
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("world_vae")
    assert build_world_vae(root / "a", TINY.seed, TINY)
    assert build_world_vae(root / "b", TINY.seed, TINY)
    return root


def test_folder_loads_and_is_stamped_with_the_recipe(built):
    folder = built / "a"
    vae = AutoencoderKLQwenImage.from_pretrained(folder)
    assert vae.config.z_dim == 16 and vae.config.base_dim == TINY.base_dim
    assert len(vae.config.latents_mean) == 16 and all(s > 0 for s in vae.config.latents_std)
    recorded = json.loads((folder / STAMP_FILE).read_text())
    assert recorded == stamp(TINY)
    assert recorded["recipe"] == RECIPE_VERSION
    assert recorded["world_vae"]["steps"] == TINY.steps and recorded["world_vae"]["seed"] == TINY.seed
    assert not build_world_vae(folder, TINY.seed, TINY)  # stamped: reused, not retrained


def test_same_seed_gives_identical_weights(built):
    a, b = load_file(built / "a" / WEIGHTS), load_file(built / "b" / WEIGHTS)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert (built / "a" / "config.json").read_text() == (built / "b" / "config.json").read_text()


@torch.no_grad()
def test_training_lowers_reconstruction_error_on_new_world_images(built):
    rng = np.random.default_rng(99)
    batch = to_tensor([draw_world_image(rng, TINY.size)[0] for _ in range(8)])
    trained = AutoencoderKLQwenImage.from_pretrained(built / "a").eval()
    untrained = init_world_vae(TINY).eval()
    error_trained = (reconstruct(trained, batch) - batch).abs().mean()
    error_untrained = (reconstruct(untrained, batch) - batch).abs().mean()
    assert error_trained < 0.85 * error_untrained


def test_seed_must_agree_with_the_config(tmp_path):
    with pytest.raises(ValueError):
        build_world_vae(tmp_path / "x", 0, TINY)


def test_training_convolutions_match_the_class():
    """The 2D fast path training runs under gives the 3D convolutions' outputs and gradients."""
    torch.manual_seed(0)
    batch = torch.rand(2, 3, 1, 32, 32) * 2 - 1
    results = []
    for fast in (False, True):
        vae = init_world_vae(TINY)
        with image_convolutions() if fast else contextlib.nullcontext():
            output = reconstruct(vae, batch)
            output.square().mean().backward()
        results.append(
            (output.detach(), vae.decoder.conv_in.weight.grad.clone(), vae.encoder.conv_in.weight.grad.clone())
        )
    for slow, fast in zip(*results, strict=True):
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)


def test_face_weighted_loss_by_hand():
    """A 2 x 2 picture, one face pixel of weight 1 + 3 = 4 beside three of weight 1: normalised to
    a mean of one the weights are 16/7 and 4/7; an error of 1 on the face pixel alone costs
    16/7 / 4 = 4/7 per pixel (1/4 unweighted), an error of 1 elsewhere 4/7 / 4 = 1/7."""
    target = torch.zeros(1, 3, 1, 2, 2)
    faces = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    on_face, off_face = target.clone(), target.clone()
    on_face[..., 0, 0] = 1.0
    off_face[..., 1, 1] = 1.0
    assert reconstruction_loss(target, on_face, 0.0).item() == pytest.approx(0.25)
    assert reconstruction_loss(target, on_face, 0.0, faces, 3.0).item() == pytest.approx(4 / 7)
    assert reconstruction_loss(target, off_face, 0.0, faces, 3.0).item() == pytest.approx(1 / 7)
    assert reconstruction_loss(target, on_face, 0.0, faces, 0.0).item() == pytest.approx(0.25)


def test_face_mask_covers_each_drawn_face_and_its_margin():
    rng = np.random.default_rng(0)
    _, truths, _ = draw_world_image(rng, 64, scene_fraction=1.0)
    mask = face_mask(truths, 64)
    assert mask.shape == (1, 64, 64) and set(mask.unique().tolist()) <= {0.0, 1.0}
    for truth in truths:
        x1, y1, x2, y2 = (int(round(v)) for v in truth.bbox)
        inside = mask[0, max(0, y1) : min(64, y2), max(0, x1) : min(64, x2)]
        assert inside.numel() and bool(inside.all())
    assert 0 < mask.mean().item() < 0.5


def test_committed_weights_are_the_committed_recipe_and_reconstruct_the_world():
    # The recipe in the code and the weights in the repository must not drift apart: retraining
    # COMMITTED_RECIPE (python -m idglow.models.world_vae DIR) is what reproduces these weights.
    recorded = json.loads((COMMITTED_FOLDER / STAMP_FILE).read_text())
    assert recorded == stamp(COMMITTED_RECIPE)
    report = json.loads((COMMITTED_FOLDER / "training.json").read_text())
    assert {k: report[k] for k in recorded} == recorded and report["last_loss"] < report["first_loss"]
    vae = AutoencoderKLQwenImage.from_pretrained(COMMITTED_FOLDER).eval()
    assert vae.config.base_dim == COMMITTED_RECIPE.base_dim and len(vae.config.latents_std) == 16
    rng = np.random.default_rng(7)
    with torch.no_grad():
        batch = to_tensor([draw_world_image(rng, COMMITTED_RECIPE.size)[0] for _ in range(8)])
        error = (reconstruct(vae, batch) - batch).abs().mean().item()
        untrained = (reconstruct(init_world_vae(COMMITTED_RECIPE).eval(), batch) - batch).abs().mean().item()
    assert error < 0.25 * untrained
