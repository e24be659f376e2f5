"""DECA's coarse encoder (Feng et al., SIGGRAPH 2021): FLAME parameters from a face crop.

A ResNet-50 followed by two fully connected layers (2048 -> 1024 -> ReLU -> 236) regresses 236
numbers from a 224 x 224 face crop (see caphuman/head/deca/crop.py). They are, in this order:
shape 100, albedo (texture) 50, expression 50, pose 6 (global rotation 3 + jaw 3, axis-angle),
orthographic camera 3 (s, tx, ty) and SH lighting 27 (9 x RGB). Module names match the
``E_flame`` entry of DECA's deca_model.tar, so its weights load as they are.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from torch import nn

from caphuman.head.deca.files import load_deca_encoder_state
from caphuman.weights.strict import is_batchnorm_counter, load_checked

logger = logging.getLogger(__name__)

# DECA's parameter vector, in order (names as in DECA's code dictionary).
DECA_CODE_LAYOUT: tuple[tuple[str, int], ...] = (
    ("shape", 100),
    ("tex", 50),
    ("exp", 50),
    ("pose", 6),
    ("cam", 3),
    ("light", 27),
)
DECA_CODE_SIZE = sum(size for _, size in DECA_CODE_LAYOUT)  # 236


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck: 1x1 reduce, 3x3 (carries the stride), 1x1 expand x4, identity/projection skip."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + skip)


class ResNet50Features(nn.Module):
    """ResNet-50 (He et al. 2016; stages of 3, 4, 6, 3 bottlenecks) up to global average pooling.

    Input (B, 3, 224, 224); output (B, 2048). No classifier head, as in DECA.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = 64
        for index, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), start=1):
            stage = [Bottleneck(channels, width, stride)]
            channels = width * Bottleneck.expansion
            stage += [Bottleneck(channels, width) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*stage))
        self.out_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        # DECA pools with AvgPool2d(7) on the 7 x 7 map of a 224 crop: the same as a global mean.
        return x.mean(dim=(2, 3))


class DecaCoarseEncoder(nn.Module):
    """DECA's ``E_flame``: ResNet-50 features -> Linear(2048, 1024) -> ReLU -> Linear(1024, 236).

    State-dict keys match deca_model.tar's ``E_flame`` entry: ``encoder.*`` (the ResNet) and
    ``layers.0.*`` / ``layers.2.*`` (the two linear layers).
    """

    def __init__(self, out_features: int = DECA_CODE_SIZE):
        super().__init__()
        self.encoder = ResNet50Features()
        self.layers = nn.Sequential(nn.Linear(self.encoder.out_features, 1024), nn.ReLU(), nn.Linear(1024, out_features))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) RGB crops in [0, 1] -> (B, 236) DECA code vectors."""
        return self.layers(self.encoder(crops))


@dataclass
class DecaCode:
    """DECA's outputs for a batch, split by :data:`DECA_CODE_LAYOUT`.

    Attributes:
        shape: (B, 100) FLAME shape.  tex: (B, 50) FLAME texture.  exp: (B, 50) FLAME expression.
        pose: (B, 6) global (0:3) and jaw (3:6) axis-angle, radians, FLAME frame.
        cam: (B, 3) orthographic (s, tx, ty) in the 224 crop's [-1, 1] square.
        light: (B, 9, 3) SH coefficients per RGB channel.
    """

    shape: torch.Tensor
    tex: torch.Tensor
    exp: torch.Tensor
    pose: torch.Tensor
    cam: torch.Tensor
    light: torch.Tensor

    @classmethod
    def from_vector(cls, vector: torch.Tensor) -> DecaCode:
        if vector.shape[-1] != DECA_CODE_SIZE:
            raise ValueError(f"DECA code vectors have {DECA_CODE_SIZE} entries, got {vector.shape[-1]}.")
        parts = dict(zip((name for name, _ in DECA_CODE_LAYOUT), vector.split([size for _, size in DECA_CODE_LAYOUT], dim=-1), strict=True))
        return cls(
            shape=parts["shape"],
            tex=parts["tex"],
            exp=parts["exp"],
            pose=parts["pose"],
            cam=parts["cam"],
            light=parts["light"].reshape(-1, 9, 3),
        )


def load_deca_encoder(path: str | os.PathLike, device: torch.device | str = "cpu") -> DecaCoarseEncoder:
    """DECA's coarse encoder with the ``E_flame`` weights of deca_model.tar, in eval mode on ``device``.

    Raises:
        CapHumanError: keys missing from the checkpoint or tensors of the wrong shape.
    """
    state = load_deca_encoder_state(path)
    # E_flame entries the coarse encoder does not use are skipped.
    encoder = load_checked(DecaCoarseEncoder(), state, path, "DECA coarse encoder (E_flame)", may_lack=is_batchnorm_counter, ignore_unexpected=True)
    return encoder.to(device).eval()


__all__ = [
    "DECA_CODE_LAYOUT",
    "DECA_CODE_SIZE",
    "Bottleneck",
    "DecaCode",
    "DecaCoarseEncoder",
    "ResNet50Features",
    "load_deca_encoder",
]
