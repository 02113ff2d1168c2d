"""Timestep modulation of the identity loss, lambda(t) (method.md, Stage 1).

``t`` is the sigma the network sees (after any resolution shift), one value per sample; each
function returns one weight per sample. The constants (lambda_id, tau, t1, t2) have their one
default in ``training.sft.SFTConfig``, which every caller passes in.
"""

from __future__ import annotations

import torch


def linear_annealing(t: torch.Tensor, lambda_id: float, tau: float) -> torch.Tensor:
    """Eq. 4: lambda_id * (t - tau) / (1 - tau) for t > tau, else 0 (Task 1, direct group fusion).

    Identity is enforced most in the early, high-t stages and released linearly towards tau.
    """
    if not 0.0 <= tau < 1.0:
        raise ValueError(f"tau must lie in [0, 1), got {tau}")
    return torch.where(t > tau, lambda_id * (t - tau) / (1.0 - tau), torch.zeros_like(t))


def temporal_gate(t: torch.Tensor, lambda_id: float, t1: float, t2: float) -> torch.Tensor:
    """Eq. 5: lambda_id inside the critical semantic window t1 <= t <= t2, else 0 (Task 2).

    Above t2 the child anatomy forms freely, below t1 textures refine freely.
    """
    if not 0.0 <= t1 <= t2 <= 1.0:
        raise ValueError(f"need 0 <= t1 <= t2 <= 1, got t1={t1}, t2={t2}")
    inside = (t >= t1) & (t <= t2)
    return torch.where(inside, torch.full_like(t, lambda_id), torch.zeros_like(t))


def constant(t: torch.Tensor, lambda_id: float) -> torch.Tensor:
    """The ablation baseline: lambda(t) = lambda_id at every t."""
    return torch.full_like(t, lambda_id)


def none(t: torch.Tensor) -> torch.Tensor:
    """No identity loss (the SFT-without-ID ablation)."""
    return torch.zeros_like(t)
