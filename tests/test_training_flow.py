"""The rectified-flow pieces of the training step, on the tiny generator."""

import math

import pytest
import torch

from training.flow import (
    clean_estimate,
    decode,
    encode,
    flow_matching_loss,
    noisy,
    pack,
    predict_velocity,
    sample_sigmas,
    unpack,
    vae_scale_factor,
)


@pytest.fixture(scope="module")
def pipeline(hub):
    return hub.generator()


def test_pack_unpack_round_trip():
    latents = torch.randn(2, 16, 1, 8, 6)
    tokens = pack(latents)
    assert tokens.shape == (2, 4 * 3, 64)
    assert torch.equal(unpack(tokens, 64, 48, 8), latents)
    assert torch.equal(unpack(tokens, 32, 24, 4), latents)  # a VAE that compresses by 4


def test_encode_decode_shapes_and_normalisation(pipeline):
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        latents = encode(pipeline.vae, images)
        side = 64 // vae_scale_factor(pipeline.vae)  # the demo's world VAE compresses by 4, Qwen-Image's by 8
        assert latents.shape == (2, 16, 1, side, side)
        assert decode(pipeline.vae, latents).shape == (2, 3, 64, 64)


def test_sigmas_follow_the_schedulers_resolution_shift(pipeline):
    scheduler = pipeline.scheduler
    raw = sample_sigmas(4, 256, scheduler, torch.Generator().manual_seed(0), shift=False)
    shifted = sample_sigmas(4, 256, scheduler, torch.Generator().manual_seed(0))
    config = scheduler.config
    m = (config.max_shift - config.base_shift) / (config.max_image_seq_len - config.base_image_seq_len)
    mu = config.base_shift + m * (256 - config.base_image_seq_len)
    expected = math.exp(mu) / (math.exp(mu) + (1 / raw - 1))
    assert torch.allclose(shifted, expected)
    assert ((shifted > 0) & (shifted < 1)).all()


def test_teacher_forced_velocity_recovers_x0():
    x0, noise = torch.randn(3, 10, 64), torch.randn(3, 10, 64)
    sigma = torch.tensor([0.1, 0.5, 0.9])
    x_t = noisy(x0, noise, sigma)
    assert torch.allclose(clean_estimate(x_t, noise - x0, sigma), x0, atol=1e-6)
    assert torch.allclose(flow_matching_loss(noise - x0, x0, noise), torch.zeros(3))


def test_token_weights_scale_each_tokens_squared_error():
    x0, noise = torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)
    velocity = torch.tensor([[[1.0, 1.0], [3.0, 3.0]]])  # squared errors 1 and 9 per channel
    assert flow_matching_loss(velocity, x0, noise).tolist() == [5.0]
    # weights 1.5 and 0.5 (mean one): (1.5 * 1 + 0.5 * 9) / 2
    weighted = flow_matching_loss(velocity, x0, noise, torch.tensor([[1.5, 0.5]]))
    assert weighted.tolist() == [3.0]


def test_velocity_covers_only_the_target_tokens(pipeline):
    transformer = pipeline.transformer
    x_t = torch.randn(2, 16, 64)  # a 64x64 target: 4x4 tokens
    references = torch.randn(2, 2 * 16, 64)
    prompt = torch.randn(2, 7, transformer.config.joint_attention_dim)
    with torch.no_grad():
        velocity = predict_velocity(
            transformer,
            x_t,
            references,
            prompt,
            torch.ones(2, 7, dtype=torch.long),
            torch.tensor([0.3, 0.8]),
            [(1, 4, 4), (1, 4, 4), (1, 4, 4)],
        )
    assert velocity.shape == x_t.shape
