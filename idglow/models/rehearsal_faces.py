"""A random-weight ``buffalo_l``: its five ONNX files with the released input/output signatures.

insightface routes each file of a pack by its signature alone (model_zoo's ``ModelRouter``): nine
outputs make a detector, a 192x192 input a landmark model, 96x96 the gender/age model and a
square input of 112 or more with one output a recogniser. The files here carry buffalo_l's
names, input names, shapes and output counts, so ``FaceAnalysis`` loads all five to the tasks
it loads the release's to:

- ``det_10g.onnx``: SCRFD's nine outputs (strides 8/16/32, two anchors, keypoints) from input
  ``input.1`` of shape [1, 3, ?, ?]. The network is the tiny twin's SCRFD layout
  (``face_nets.TinySCRFD``), not SCRFD-10G's backbone.
- ``w600k_r50.onnx``: an iresnet50 graph (four stages of IBasicBlocks, [3, 4, 14, 3] at
  64/128/256/512 channels, PReLU, the 7x7x512 -> 512 head), [N, 3, 112, 112] -> [N, 512].
- ``genderage.onnx``: [N, 3, 96, 96] -> [N, 3]; ``1k3d68.onnx``: [N, 3, 192, 192] -> [N, 3309];
  ``2d106det.onnx``: [N, 3, 192, 192] -> [N, 212]; small convolutional stand-ins.

Random weights would score most of SCRFD's anchors as faces, and insightface would then run the
recogniser on hundreds of boxes per image. The detector's score biases are therefore shifted
(``calibrate_detector``) so that it finds about as many faces on a drawn portrait as a trained
one would, and a rehearsal runs every face path at a real detector's cost.

The released graphs name their outputs by ONNX node number (``683``...), which torch's exporter
refuses; these files use SCRFD's stride names and ``embedding``/``fc1``. insightface never reads
output names, only their count and shapes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from idglow.models.face_nets import ANCHORS, TinyGenderAge, TinySCRFD, export_onnx, scrfd_output_names

IRESNET50_LAYERS = (3, 4, 14, 3)
EMBEDDING_SIZE = 512


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class IBasicBlock(nn.Module):
    """arcface_torch's residual block: BN, conv, BN, PReLU, strided conv, BN, plus the shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (self.downsample(x) if self.downsample is not None else x)


class IResNet(nn.Module):
    """arcface_torch's IResNet (iresnet50 with ``layers=(3, 4, 14, 3)``), 112x112 in."""

    def __init__(self, layers: tuple[int, ...] = IRESNET50_LAYERS, num_features: int = EMBEDDING_SIZE):
        super().__init__()
        self.inplanes = 64
        self.conv1 = _conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-05)
        self.prelu = nn.PReLU(64)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            self._make_layer(planes, blocks) for planes, blocks in zip((64, 128, 256, 512), layers, strict=True)
        )
        self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
        self.dropout = nn.Dropout(p=0.0)
        self.fc = nn.Linear(512 * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, 1, 2, bias=False), nn.BatchNorm2d(planes, eps=1e-05)
        )
        layers = [IBasicBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


class LandmarkNet(nn.Module):
    """A 192x192 face crop to ``outputs`` landmark coordinates (a stand-in for buffalo_l's nets)."""

    def __init__(self, outputs: int):
        super().__init__()
        self.features = nn.Sequential(
            _conv3x3(3, 16, 2),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            _conv3x3(16, 32, 2),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            _conv3x3(32, 64, 2),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(64, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@torch.no_grad()
def _vary_constant_initialisations(model: nn.Module) -> nn.Module:
    """Seeded values for what PyTorch initialises to constants (batch-norm statistics and affine
    terms, PReLU slopes). Left equal, the exporter merges the identical tensors behind Identity
    nodes, a graph no released file has and onnx2torch cannot convert."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.weight.uniform_(0.5, 1.5)
            module.bias.normal_(0.0, 0.1)
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
        elif isinstance(module, nn.PReLU):
            module.weight.uniform_(0.1, 0.4)
    return model


@torch.no_grad()
def calibrate_detector(detector: TinySCRFD, faces: int = 2, seed: int = 0) -> TinySCRFD:
    """Shift every score bias by one amount so that exactly ``faces`` anchors score above 0.5 on a
    drawn portrait at the detection size (insightface's input: BGR, (x - 127.5) / 128)."""
    from idglow.data.demo_celebahq import identity_style
    from idglow.data.faces import render_portrait

    rng = np.random.default_rng(seed)
    portrait, _ = render_portrait(identity_style(0, seed), detector.input_size, rng)
    pixels = np.asarray(portrait.convert("RGB"), dtype=np.float32)[:, :, ::-1].copy()
    image = torch.from_numpy((pixels - 127.5) / 128.0).permute(2, 0, 1)[None]
    logits = torch.cat([level[..., 0].reshape(-1) for level in detector.eval().raw(image)])
    shift = float(torch.topk(logits, faces + 1).values[-1])  # the first logit that must stay below 0
    for head in detector.heads:
        score_channels = torch.arange(ANCHORS) * 15
        head[-1].bias[score_channels] -= shift
    return detector


def write_rehearsal_face_pack(folder: Path, seed: int, recognizer_layers: tuple[int, ...] = IRESNET50_LAYERS) -> Path:
    """The five buffalo_l files in ``folder``, random weights fixed by ``seed``."""
    folder.mkdir(parents=True, exist_ok=True)
    exports = [
        ("det_10g.onnx", lambda: TinySCRFD(640), 640, "input.1", scrfd_output_names(), {"dynamic_size": True}),
        ("w600k_r50.onnx", lambda: IResNet(recognizer_layers), 112, "input.1", ["embedding"], {"dynamic_batch": True}),
        ("genderage.onnx", TinyGenderAge, 96, "data", ["fc1"], {"dynamic_batch": True}),
        ("1k3d68.onnx", lambda: LandmarkNet(3309), 192, "data", ["fc1"], {"dynamic_batch": True}),
        ("2d106det.onnx", lambda: LandmarkNet(212), 192, "data", ["fc1"], {"dynamic_batch": True}),
    ]
    for offset, (name, make, size, input_name, outputs, options) in enumerate(exports):
        torch.manual_seed(seed + offset)
        model = _vary_constant_initialisations(make())
        if isinstance(model, TinySCRFD):
            model = calibrate_detector(model, seed=seed)
        export_onnx(
            model,
            torch.zeros(1, 3, size, size),
            folder / name,
            outputs,
            input_name=input_name,
            **options,
        )
    return folder
