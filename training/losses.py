"""The training losses: the multi-face identity loss (Eq. 2-3) and weighted-margin DPO (Eq. 6-7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


def hungarian_identity_loss(source_embeddings: torch.Tensor, generated_embeddings: torch.Tensor) -> torch.Tensor:
    """Eq. 2-3: L_ID = (1/N) * sum_i (1 - S[i, pi*(i)]).

    Rows are L2-normalised: N source faces (N >= 1), M generated faces (any M, including 0).
    The one-to-one assignment pi* maximises the total cosine similarity and is solved by
    ``scipy.optimize.linear_sum_assignment`` on the detached matrix; a source left unmatched
    contributes a constant 1 (choice). Differentiable with respect to the generated embeddings.
    """
    n = source_embeddings.shape[0]
    if n == 0:
        raise ValueError("the identity loss needs at least one source face")
    if generated_embeddings.shape[0] == 0:
        return source_embeddings.new_ones(())
    similarity = source_embeddings @ generated_embeddings.T
    rows, cols = linear_sum_assignment(similarity.detach().float().cpu().numpy(), maximize=True)
    matched = similarity[torch.as_tensor(rows), torch.as_tensor(cols)]
    unmatched = n - len(rows)
    return ((1.0 - matched).sum() + unmatched) / n


def weighted_dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
    chosen_weight: float = 1.0,
    margin: float = 0.0,
    sft_weight: float = 0.0,
) -> torch.Tensor:
    """Eq. 6-7: -log sigmoid(-(beta/2) * (w * Delta_w - Delta_l) - m) + lambda_sft * l_theta(x^w).

    Inputs are per-sample velocity MSEs of shape (B,) (lower is more likely); Delta_w and
    Delta_l are the policy's MSE minus the frozen reference's, for the chosen and the rejected
    sample. With w = 1, m = 0, lambda_sft = 0 this is Diffusion-DPO as in the diffusers /
    Salesforce scripts. Returns the batch mean.
    """
    delta_chosen = policy_chosen - reference_chosen
    delta_rejected = policy_rejected - reference_rejected
    logits = -0.5 * beta * (chosen_weight * delta_chosen - delta_rejected) - margin
    return (-F.logsigmoid(logits) + sft_weight * policy_chosen).mean()


def dpo_statistics(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    chosen_weight: float = 1.0,
) -> dict[str, float]:
    """Implicit accuracy (fraction with w*Delta_w - Delta_l < 0) and the mean reward margin."""
    delta = chosen_weight * (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return {"implicit_accuracy": float((delta < 0).float().mean()), "reward_margin": float((-delta).mean())}
