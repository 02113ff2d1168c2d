"""The modulated multi-face identity term of Eq. 1: lambda(t) * L_ID, per sample.

For the samples with lambda(t) > 0 only: the clean estimate of the target tokens
(x0_hat = x_t - t v), unpacked and un-normalised, is decoded by the VAE; faces are detected
without gradient, aligned differentiably to the ArcFace template, embedded by the torch copy of
the recogniser, and matched to the source faces by the Hungarian algorithm (Eq. 2-3). When no
sample of the batch has lambda > 0, neither the VAE decoder nor any face model runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from idglow.faces import detect_faces, portrait_embedding
from idglow.models.face_torch import align_faces, detect_landmarks, embed_faces
from training.flow import clean_estimate, decode, unpack, vae_scale_factor
from training.losses import hungarian_identity_loss


@dataclass
class IdentityTerm:
    weighted: torch.Tensor  # (B,) lambda(t) * L_ID, zero where lambda is zero
    losses: torch.Tensor  # (B,) L_ID, zero where it was not computed
    detections: list[int] = field(default_factory=list)  # faces found, per sample (-1: not computed)
    decoded: int = 0  # how many samples went through the VAE decoder


def source_embeddings(face_analysis, portraits: list[Image.Image]) -> torch.Tensor:
    """(N, d) normalised embeddings of the largest face of each portrait (zeros when none is
    found), chosen exactly as the pair scorer chooses its condition faces."""
    rows = [portrait_embedding(detect_faces(face_analysis, portrait)) for portrait in portraits]
    return torch.as_tensor(np.stack(rows), dtype=torch.float32)


Detector = Callable[[torch.Tensor], np.ndarray]  # (3, H, W) image -> (F, 5, 2) landmarks, no gradient


def identity_losses(
    images: torch.Tensor, sources: list[torch.Tensor], detect: Detector, encoder
) -> tuple[torch.Tensor, list[int]]:
    """L_ID per image of ``images`` (B, 3, H, W) RGB in [-1, 1], against each image's source faces.
    ``detect`` finds the five landmarks of every face (``partial(detect_landmarks, face_analysis)``)."""
    losses, detections = [], []
    for index in range(images.shape[0]):
        landmarks = detect(images[index])
        detections.append(len(landmarks))
        crops = align_faces(images, [index] * len(landmarks), list(landmarks))
        generated = embed_faces(encoder, crops) if len(landmarks) else crops.new_zeros((0, sources[index].shape[1]))
        losses.append(hungarian_identity_loss(sources[index].to(images.device, generated.dtype), generated))
    return torch.stack(losses), detections


def modulated_identity_term(
    x_t: torch.Tensor,
    velocity: torch.Tensor,
    sigma: torch.Tensor,
    lambdas: torch.Tensor,
    height: int,
    width: int,
    vae,
    sources: list[torch.Tensor],
    detect: Detector,
    encoder,
) -> IdentityTerm:
    """lambda(t) * L_ID for a batch of target tokens; runs the decoder and face models only where lambda > 0."""
    batch = x_t.shape[0]
    weighted = x_t.new_zeros(batch, dtype=torch.float32)
    losses = x_t.new_zeros(batch, dtype=torch.float32)
    active = torch.nonzero(lambdas > 0).flatten()
    if len(active) == 0:
        return IdentityTerm(weighted, losses, [-1] * batch, 0)
    estimate = clean_estimate(x_t[active], velocity[active], sigma[active])
    images = decode(vae, unpack(estimate, height, width, vae_scale_factor(vae))).float().clamp(-1, 1)
    active_losses, found = identity_losses(images, [sources[i] for i in active.tolist()], detect, encoder)
    weighted = weighted.index_put((active,), lambdas[active].float() * active_losses)
    losses = losses.index_put((active,), active_losses)
    detections = np.full(batch, -1)
    detections[active.cpu().numpy()] = found
    return IdentityTerm(weighted, losses, detections.tolist(), len(active))


class IdentityLoss:
    """The identity term for a training run: the pack's detector (insightface, no gradient), its
    recogniser converted to torch (frozen), and the source faces of each sample, computed once."""

    def __init__(self, pipeline, config):
        # A training process has no hub (python -m training.sft names the pack folder), so it
        # calls the hub's own loaders: the loss detects faces exactly as the FaceSim metric does.
        from idglow.models.hub import load_face_analysis, load_face_encoder

        self.app = load_face_analysis(Path(config.face_pack_dir))
        self.encoder = load_face_encoder(Path(config.face_pack_dir), pipeline.transformer.device)
        self.pipeline, self.size = pipeline, config.resolution
        self.sources: dict[str, torch.Tensor] = {}

    def __call__(self, x_t, velocity, sigma, lambdas, samples) -> IdentityTerm:
        for sample in samples:
            if sample.key not in self.sources:
                self.sources[sample.key] = source_embeddings(self.app, sample.conditions)
        return modulated_identity_term(
            x_t,
            velocity,
            sigma,
            lambdas,
            self.size,
            self.size,
            self.pipeline.vae,
            [self.sources[s.key] for s in samples],
            partial(detect_landmarks, self.app),
            self.encoder,
        )
