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
    RECIPE_VERSION,
    WorldVAEConfig,
    build_world_vae,
    draw_world_image,
    image_convolutions,
    init_world_vae,
    reconstruct,
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
