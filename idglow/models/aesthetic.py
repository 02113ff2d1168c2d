"""The LAION "improved aesthetic predictor": an MLP on L2-normalised CLIP image embeddings.

The real weights (``sac+logos+ava1-l14-linearMSE.pth``) fit ViT-L/14's 768-wide embedding; the
tiny twin has the same layers on the tiny CLIP's width. Key names match the released file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class AestheticPredictor(nn.Module):
    """Linear(d,1024) Dropout(.2) Linear(1024,128) Dropout(.2) Linear(128,64) Dropout(.1) Linear(64,16) Linear(16,1)."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, normalized_embeddings: torch.Tensor) -> torch.Tensor:
        """Scores of shape (B,) from L2-normalised CLIP image embeddings of shape (B, d)."""
        return self.layers(normalized_embeddings).squeeze(-1)


def write_tiny_aesthetic(path: Path, input_size: int, seed: int) -> Path:
    torch.manual_seed(seed)
    model = AestheticPredictor(input_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def load_aesthetic(path: Path, device: torch.device) -> AestheticPredictor:
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = AestheticPredictor(int(state["layers.0.weight"].shape[1]))
    model.load_state_dict(state)
    return model.to(device).eval()
