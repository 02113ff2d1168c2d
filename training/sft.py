"""Stage 1, supervised fine-tuning with the modulated multi-face identity loss (Eq. 1-5).

    python -m training.sft --config sft.json

SFT's part of the training loop (``training.loop``): its config (the loop's ``RunConfig`` and
the identity loss's knobs), its loss (``sft_loss``: flow matching plus lambda(t) times the
identity loss, on encoded tensors) and the objective that hands the loop that loss.
"""

from __future__ import annotations

if __name__ == "__main__":  # a training process: settle its environment before a model library is imported
    from idglow.environment import settle

    settle()

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from training import loop, modulation
from training.checkpoints import location_fields  # noqa: F401  (assets.training keys run folders with it from here)
from training.config import FIELD_HELP as RUN_FIELD_HELP
from training.config import RunConfig
from training.data import Sample
from training.encodings import EncodedBatch, EncodingCache
from training.flow import Generators, flow_matching_loss, noisy, predict_velocity, randn, sample_sigmas
from training.identity import IdentityLoss
from training.reporting import run_command


@dataclass
class SFTConfig(RunConfig):
    """Every knob of an SFT run: the loop's (RunConfig) and the identity loss's; written into
    each checkpoint's manifest."""

    modulation: str = "task"  # task (annealing for Task 1, gate for Task 2), annealing, gate, constant, none
    # The method's constants (Eq. 4-5), defined here only: the paper gives no values (method.md's choices).
    lambda_id: float = 0.1
    tau: float = 0.2
    t1: float = 0.3
    t2: float = 0.7
    face_pack_dir: str | None = None  # insightface pack for the ID loss; None disables it


# What the launchpad shows beside each run-config field (assets/training.py); docs/training.md
# has the same table with the reasons behind the defaults.
FIELD_HELP = {
    **RUN_FIELD_HELP,
    "modulation": "lambda(t): task (annealing for Task 1, gate for Task 2), annealing, gate, constant, none",
    "lambda_id": "lambda_id, the identity loss weight (Eq. 4-5)",
    "tau": "tau, the annealing threshold (Eq. 4)",
    "t1": "t_1, the gate's lower end (Eq. 5)",
    "t2": "t_2, the gate's upper end (Eq. 5)",
}


def lambda_for(config: SFTConfig, sigma: torch.Tensor, tasks: list[str]) -> torch.Tensor:
    """lambda(t) per sample; ``task`` picks annealing for Task 1 and the gate for Task 2 (task-adaptive)."""
    annealing = modulation.linear_annealing(sigma, config.lambda_id, config.tau)
    gate = modulation.temporal_gate(sigma, config.lambda_id, config.t1, config.t2)
    if config.modulation == "task":
        is_child = torch.tensor([task == "age_transformed" for task in tasks])
        return torch.where(is_child, gate, annealing)
    return {
        "annealing": annealing,
        "gate": gate,
        "constant": modulation.constant(sigma, config.lambda_id),
        "none": modulation.none(sigma),
    }[config.modulation]


def sft_loss(
    transformer,
    scheduler,
    batch: EncodedBatch,
    tasks: list[str],
    config: SFTConfig,
    generator: Generators,
    identity=None,
    samples: list[Sample] | None = None,
) -> tuple[torch.Tensor, dict]:
    """L_SFT = L_FM + lambda(t) * L_ID, averaged over the batch (Eq. 1), on encoded tensors.

    ``transformer`` may be wrapped for data parallelism (it is only called). ``generator`` is one
    generator or one per sample. ``identity(x_t, velocity, sigma, lambdas, samples)`` returns the
    IdentityTerm; None leaves it out."""
    x0 = batch.x0
    noise = randn(tuple(x0.shape), generator).to(x0.device, x0.dtype)
    sigma = sample_sigmas(
        x0.shape[0], x0.shape[1], scheduler, generator, config.logit_mean, config.logit_std, config.resolution_shift
    ).to(x0.device)
    x_t = noisy(x0, noise, sigma)
    velocity = predict_velocity(transformer, x_t, batch.refs, batch.prompt, batch.mask, sigma, batch.shapes)
    fm = flow_matching_loss(velocity, x0, noise)
    lambdas = lambda_for(config, sigma.cpu(), tasks).to(fm.device)
    logs = {"loss_fm": fm.mean().item(), "lambda": lambdas.mean().item(), "sigma": sigma.mean().item()}
    loss = fm
    if identity is not None:
        term = identity(x_t, velocity, sigma, lambdas, samples)
        loss = fm + term.weighted
        logs.update(
            loss_id=term.losses.sum().item() / max(term.decoded, 1),
            decoded=term.decoded,
            detections=sum(d for d in term.detections if d >= 0),
        )
        logs.update(detection_rate_by_t_bin(term.detections, sigma, expected=len(batch.shapes) - 1))
    return loss.mean(), logs


def detection_rate_by_t_bin(detections: list[int], sigma: torch.Tensor, expected: int, bins: int = 5) -> dict:
    """Faces found per expected face (the batch's subject count), per sigma bin, for the samples
    whose ID loss ran: at high t the clean estimate is a blur and detection fails, which the
    loss alone would hide."""
    found: dict[str, list[float]] = {}
    for index, count in enumerate(detections):
        if count < 0:
            continue
        b = min(int(float(sigma[index]) * bins), bins - 1)
        found.setdefault(f"detect_rate_t{b / bins:.1f}-{(b + 1) / bins:.1f}", []).append(
            min(count, expected) / expected
        )
    return {key: sum(values) / len(values) for key, values in found.items()}


class SFTObjective:
    """Eq. 1 for the loop: the flow-matching loss on the target tokens plus the task-adaptive
    identity term (when the config names a face pack, or ``identity_factory`` builds one)."""

    def __init__(self, config: SFTConfig, identity_factory=None):
        self.config = config
        self.identity_factory = identity_factory or (IdentityLoss if config.face_pack_dir else None)
        self.scheduler = None
        self.identity = None

    def prepare(self, pipeline) -> None:
        """The scheduler (sigma's resolution shift) and the identity loss on the pipeline's VAE and device."""
        self.scheduler = pipeline.scheduler
        if self.identity_factory is not None:
            self.identity = self.identity_factory(pipeline, self.config)

    def loss(
        self, model, cache: EncodingCache, samples: list[Sample], generators: Generators, heaviest: bool = False
    ) -> tuple[torch.Tensor, dict]:
        """``sft_loss`` of a micro-batch on its target encodings. ``heaviest``: constant modulation,
        so that every sample takes the ID path (its memory only counts where lambda(t) > 0)."""
        config = replace(self.config, modulation="constant") if heaviest else self.config
        tasks = [s.meta["task"] for s in samples]
        batch = cache.batch(samples, "target")
        return sft_loss(model, self.scheduler, batch, tasks, config, generators, self.identity, samples)


def train(config: SFTConfig, identity_factory=None, stop_after: int | None = None, on_step=None, pipeline=None) -> Path:
    """Run (or resume) SFT, on one process or under torchrun; returns the final checkpoint folder
    (``training.loop.train`` documents the rest)."""
    return loop.train(config, SFTObjective(config, identity_factory), stop_after, on_step, pipeline)


def main() -> None:
    run_command("SFT of the generator with the modulated identity loss.", SFTConfig, train, "checkpoint")


if __name__ == "__main__":
    main()
