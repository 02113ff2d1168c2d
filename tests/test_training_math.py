"""Equations 2-7 against hand-computed values and method.md's test vector."""

import math

import pytest
import torch
import torch.nn.functional as F

from training.losses import dpo_statistics, hungarian_identity_loss, weighted_dpo_loss
from training.modulation import constant, linear_annealing, none, temporal_gate

T = torch.tensor([0.0, 0.2, 0.3, 0.6, 0.7, 1.0])


def test_linear_annealing_eq4():
    expected = [0.0, 0.0, 0.1 * 0.1 / 0.8, 0.1 * 0.4 / 0.8, 0.1 * 0.5 / 0.8, 0.1]
    assert linear_annealing(T, 0.1, 0.2).tolist() == pytest.approx(expected)


def test_temporal_gate_eq5():
    assert temporal_gate(T, 0.1, 0.3, 0.7).tolist() == pytest.approx([0, 0, 0.1, 0.1, 0.1, 0])


def test_constant_and_none():
    assert constant(T, 0.25).tolist() == pytest.approx([0.25] * 6)
    assert none(T).tolist() == [0.0] * 6


def test_bad_windows_are_errors():
    with pytest.raises(ValueError):
        linear_annealing(T, 0.1, 1.0)
    with pytest.raises(ValueError):
        temporal_gate(T, 0.1, 0.8, 0.2)


def test_hungarian_identity_loss_hand_computed():
    e1, e2 = torch.eye(2)
    half = torch.tensor([math.sqrt(0.5), math.sqrt(0.5)])
    sources = torch.stack([e1, e2])
    generated = torch.stack([half, e1]).requires_grad_(True)
    loss = hungarian_identity_loss(sources, generated)  # 1 -> e1 (1.0), 2 -> half (0.707)
    assert loss.item() == pytest.approx(((1 - 1.0) + (1 - math.sqrt(0.5))) / 2)
    loss.backward()
    assert generated.grad is not None and generated.grad.abs().sum() > 0


def test_unmatched_sources_count_one_and_no_faces_is_one():
    sources = torch.eye(3)
    assert hungarian_identity_loss(sources, torch.eye(3)[:1]).item() == pytest.approx((0 + 1 + 1) / 3)
    assert hungarian_identity_loss(sources, torch.zeros(0, 3)).item() == 1.0


def test_dpo_test_vector_from_method_md():
    # float64: beta/2 = 1250 times a difference of 2e-4 needs more than float32's 7 digits
    args = [torch.tensor([v], dtype=torch.float64) for v in (0.5000, 0.5100, 0.5002, 0.5098)]
    assert weighted_dpo_loss(*args, beta=2500).item() == pytest.approx(0.474077, abs=1e-6)
    assert weighted_dpo_loss(*args, beta=2500, chosen_weight=1.5, margin=0.1, sft_weight=0.1).item() == pytest.approx(
        0.514712, abs=1e-6
    )


def test_defaults_equal_standard_diffusion_dpo():
    torch.manual_seed(0)
    pw, pl, rw, rl = (torch.rand(8) for _ in range(4))
    standard = -F.logsigmoid(-0.5 * 2500 * ((pw - pl) - (rw - rl))).mean()
    assert torch.allclose(weighted_dpo_loss(pw, pl, rw, rl, beta=2500), standard)


def test_dpo_statistics():
    stats = dpo_statistics(
        torch.tensor([0.1, 0.3]), torch.tensor([0.2, 0.2]), torch.tensor([0.2, 0.2]), torch.tensor([0.2, 0.2])
    )
    assert stats["implicit_accuracy"] == 0.5
    assert stats["reward_margin"] == pytest.approx(0.0, abs=1e-7)
