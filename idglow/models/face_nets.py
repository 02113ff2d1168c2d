"""Tiny networks in insightface's ONNX layouts, so ``FaceAnalysis`` routes and runs them as-is.

- ``TinySCRFD``: the SCRFD layout insightface recognises by its nine outputs: ``score_8,
  score_16, score_32, bbox_8, bbox_16, bbox_32, kps_8, kps_16, kps_32``, each ``[h*w*2, 1|4|10]``
  with row ``(y*w + x)*2 + anchor``, sigmoided scores, distances in stride units from the cell's
  top-left corner. Input: RGB, ``(p - 127.5) / 128``, a fixed square size.
- ``TinyArcFace``: one 112x112 RGB input normalised ``(p - 127.5) / 127.5``, one embedding output.
- ``TinyGenderAge``: one 96x96 input, one output of 3 values (two gender logits, age / 100).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

STRIDES = (8, 16, 32)
ANCHORS = 2


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinySCRFD(nn.Module):
    def __init__(self, input_size: int = 128):
        super().__init__()
        self.input_size = input_size
        self.stem = nn.Sequential(_conv(3, 16, 2), _conv(16, 24, 2), _conv(24, 24))  # stride 4
        self.stage8 = nn.Sequential(_conv(24, 48, 2), _conv(48, 48))
        self.stage16 = nn.Sequential(_conv(48, 64, 2), _conv(64, 64))
        self.stage32 = nn.Sequential(_conv(64, 64, 2), _conv(64, 64))
        self.heads = nn.ModuleList(
            nn.Sequential(_conv(c, 48), nn.Conv2d(48, ANCHORS * (1 + 4 + 10), 1)) for c in (48, 64, 64)
        )

    def raw(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per stride: (B, H, W, anchors, 15) with score logits, box distances and keypoints."""
        f8 = self.stage8(self.stem(x))
        f16 = self.stage16(f8)
        f32 = self.stage32(f16)
        outputs = []
        for feature, head in zip((f8, f16, f32), self.heads, strict=True):
            y = head(feature)  # (B, A*15, H, W)
            b, _, h, w = y.shape
            outputs.append(y.permute(0, 2, 3, 1).reshape(b, h, w, ANCHORS, 15))
        return outputs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The nine insightface outputs for a batch of one."""
        scores, boxes, points = [], [], []
        for level in self.raw(x):
            flat = level[0].reshape(-1, 15)
            scores.append(torch.sigmoid(flat[:, :1]))
            boxes.append(flat[:, 1:5])
            points.append(flat[:, 5:15])
        return (*scores, *boxes, *points)


class TinyArcFace(nn.Module):
    def __init__(self, embedding_size: int = 64):
        super().__init__()
        self.features = nn.Sequential(
            _conv(3, 16, 2),
            _conv(16, 32, 2),
            _conv(32, 32),
            _conv(32, 64, 2),
            _conv(64, 64),
            _conv(64, 64, 2),
        )  # 112 -> 7x7: the layout of the face (where eyes, marks and glasses are) stays in the features
        self.embedding = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 7 * 7, embedding_size), nn.BatchNorm1d(embedding_size)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.features(x))


class TinyGenderAge(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            _conv(3, 16, 2), _conv(16, 32, 2), _conv(32, 48, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.head = nn.Linear(48, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.features(x))
        return torch.cat([out[:, :2], torch.sigmoid(out[:, 2:])], dim=1)


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    output_names: list[str],
    dynamic_batch: bool = False,
    input_name: str = "input.1",
    dynamic_size: bool = False,
) -> Path:
    """Export with the TorchScript exporter: one self-contained file, folded batch norms, a fixed
    input size (and a dynamic batch axis where asked, as insightface's recognisers have; or a
    dynamic height and width, as buffalo_l's detector has)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {input_name: {0: "batch"}, **{name: {0: "batch"} for name in output_names}}
    if dynamic_size:
        dynamic_axes = {input_name: {2: "height", 3: "width"}, **{name: {0: "rows"} for name in output_names}}
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=[input_name],
        output_names=output_names,
        opset_version=17,
        do_constant_folding=True,
        dynamo=False,
        dynamic_axes=dynamic_axes,
    )
    return path


def scrfd_output_names() -> list[str]:
    return [f"{kind}_{stride}" for kind in ("score", "bbox", "kps") for stride in STRIDES]
