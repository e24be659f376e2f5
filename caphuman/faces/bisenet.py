"""BiSeNet face parsing (19 CelebAMask-HQ classes), the layout of ``79999_iter.pth``.

CapHuman paints non-face regions of the reference white using a face-parsing model; the widely
used one is zllrunning/face-parsing.PyTorch, a BiSeNet with a ResNet-18 context path trained on
CelebAMask-HQ (weights file ``79999_iter.pth``). The architecture is written here so that file
loads unchanged; names and shapes match it (``cp.resnet.conv1.weight``,
``cp.resnet.layer2.0.downsample.0.weight``, ``cp.arm16.conv_atten.weight``,
``cp.conv_avg.conv.weight``, ``ffm.convblk.conv.weight``, ``conv_out.conv.conv.weight``,
``conv_out.conv_out.weight``, ``conv_out16.*``, ``conv_out32.*``).

Facts of that model that matter here:
- the spatial path of the BiSeNet paper is dropped; the ResNet-18 stride-8 feature
  (layer2, 128 channels) stands in for it;
- all ConvBNReLU convolutions are bias-free with PyTorch-default BatchNorm (eps 1e-5);
- input: RGB resized to 512x512 (bilinear), ToTensor then ImageNet mean/std normalisation;
  the parsing is the argmax of the main head's 19 logits (the x16/x32 heads are auxiliary
  training losses and are skipped at inference here; their weights still load).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from caphuman.weights.files import read_state_dict, without_data_parallel_prefix
from caphuman.weights.registry import weights_entry
from caphuman.weights.strict import is_batchnorm_counter, load_checked

logger = logging.getLogger(__name__)

# Label index -> CelebAMask-HQ part, in the order zllrunning's preprocessing assigns them.
CELEBAMASK_HQ_CLASSES: tuple[str, ...] = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear",
    "ear_r", "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)  # fmt: skip
NUM_FACE_PARSING_CLASSES = len(CELEBAMASK_HQ_CLASSES)  # 19
PARSING_INPUT_SIZE = 512
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConvBNReLU(nn.Module):
    """Bias-free conv -> BatchNorm -> ReLU; state keys ``conv.*`` and ``bn.*``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class ResidualBlock(nn.Module):
    """ResNet basic block (two 3x3 convs); a 1x1 projection ``downsample`` when shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
            if in_channels != out_channels or stride != 1
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = self.downsample(x) if self.downsample is not None else x
        return F.relu(shortcut + residual)


class ResNet18Features(nn.Module):
    """ResNet-18 trunk returning the stride 8, 16 and 32 features (128, 256, 512 channels)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = nn.Sequential(ResidualBlock(64, 64), ResidualBlock(64, 64))
        self.layer2 = nn.Sequential(ResidualBlock(64, 128, stride=2), ResidualBlock(128, 128))
        self.layer3 = nn.Sequential(ResidualBlock(128, 256, stride=2), ResidualBlock(256, 256))
        self.layer4 = nn.Sequential(ResidualBlock(256, 512, stride=2), ResidualBlock(512, 512))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), kernel_size=3, stride=2, padding=1)
        stride8 = self.layer2(self.layer1(x))
        stride16 = self.layer3(stride8)
        stride32 = self.layer4(stride16)
        return stride8, stride16, stride32


class AttentionRefinement(nn.Module):
    """ConvBNReLU, then channel attention: global pool -> 1x1 conv -> BN -> sigmoid, multiplied in."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels, 3)
        self.conv_atten = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv(x)
        attention = torch.sigmoid(self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(features, 1))))
        return features * attention


class ContextPath(nn.Module):
    """ResNet-18 + attention refinement at strides 16 and 32 + global context, fused top-down.

    Returns (stride-8 backbone feature (128 ch), stride-8 context (128 ch), stride-16 context
    (128 ch)). Upsampling is nearest-neighbour, as in the trained model.
    """

    def __init__(self):
        super().__init__()
        self.resnet = ResNet18Features()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128, 3)
        self.conv_head16 = ConvBNReLU(128, 128, 3)
        self.conv_avg = ConvBNReLU(512, 128, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        stride8, stride16, stride32 = self.resnet(x)
        global_context = self.conv_avg(F.adaptive_avg_pool2d(stride32, 1))
        # Adding a (N, C, 1, 1) tensor is what the model's nearest "upsampling" to H32 x W32 does.
        context32 = self.arm32(stride32) + global_context
        context32 = self.conv_head32(F.interpolate(context32, stride16.shape[2:], mode="nearest"))
        context16 = self.arm16(stride16) + context32
        context16 = self.conv_head16(F.interpolate(context16, stride8.shape[2:], mode="nearest"))
        return stride8, context16, context32


class FeatureFusion(nn.Module):
    """Concat -> 1x1 ConvBNReLU, then squeeze-excitation style attention added back (x + x*a)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.convblk = ConvBNReLU(in_channels, out_channels, 1)
        self.conv1 = nn.Conv2d(out_channels, out_channels // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_channels // 4, out_channels, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        features = self.convblk(torch.cat([spatial, context], dim=1))
        attention = torch.sigmoid(self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(features, 1)))))
        return features + features * attention


class SegmentationHead(nn.Module):
    """3x3 ConvBNReLU then a bias-free 1x1 conv to class logits."""

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, mid_channels, 3)
        self.conv_out = nn.Conv2d(mid_channels, num_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """zllrunning's face-parsing BiSeNet; ``conv_out16``/``conv_out32`` are training-only heads."""

    def __init__(self, num_classes: int = NUM_FACE_PARSING_CLASSES):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = SegmentationHead(256, 256, num_classes)
        self.conv_out16 = SegmentationHead(128, 64, num_classes)
        self.conv_out32 = SegmentationHead(128, 64, num_classes)

    def forward(self, normalised: torch.Tensor) -> torch.Tensor:
        """Main-head logits.

        Args:
            normalised: (N, 3, H, W) RGB, ImageNet mean/std normalised; H, W multiples of 32
                (512x512 as trained).
        Returns:
            (N, num_classes, H, W) logits, bilinearly upsampled (align_corners=True, as trained).
        """
        stride8, context8, _ = self.cp(normalised)
        logits = self.conv_out(self.ffm(stride8, context8))
        return F.interpolate(logits, normalised.shape[2:], mode="bilinear", align_corners=True)


class FaceParser:
    """Per-pixel CelebAMask-HQ labels (see :data:`CELEBAMASK_HQ_CLASSES`) for RGB photos."""

    def __init__(self, model: BiSeNet, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)

    @classmethod
    def from_file(cls, path: str | Path, device: str | torch.device = "cpu") -> FaceParser:
        """Load ``79999_iter.pth`` (or the same tensors as ``.safetensors``).

        Raises:
            MissingWeightsError: no file at ``path``.
            CapHumanError: the file is unreadable or its names/shapes are not this BiSeNet's.
        """
        what = "BiSeNet face-parsing weights"
        state_dict = without_data_parallel_prefix(read_state_dict(path, what=what, source=weights_entry("face_parsing").source))
        model = load_checked(BiSeNet(), state_dict, path, what, may_lack=is_batchnorm_counter)
        logger.info("Loaded BiSeNet face-parsing weights from %s", path)
        return cls(model, device=device)

    def preprocess(self, image: np.ndarray, native_size: bool = False) -> torch.Tensor:
        """RGB uint8 (H, W, 3) -> (1, 3, S, S') float32, ImageNet-normalised.

        ``native_size`` keeps the photo's own size, as the published CapHuman script parses its
        reference (ToTensor + Normalize, no resize); otherwise the photo is resized to the 512 x 512
        the model was trained at, with PIL's bilinear filter (what zllrunning's evaluation used; it
        antialiases when shrinking, unlike OpenCV's INTER_LINEAR).
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"Face parsing needs an RGB uint8 (H, W, 3) image, got {image.shape} {image.dtype}.")
        if native_size:
            resized = image
        else:
            resized = np.array(Image.fromarray(image).resize((PARSING_INPUT_SIZE, PARSING_INPUT_SIZE), Image.BILINEAR))
        pixels = torch.from_numpy(np.array(resized)).permute(2, 0, 1).float() / 255.0  # a copy: photos may be read-only
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return ((pixels - mean) / std).unsqueeze(0)

    @torch.inference_mode()
    def parse(self, image: np.ndarray, native_size: bool = False) -> np.ndarray:
        """Labels (H, W) uint8 in [0, 19) at the input's own size (nearest-neighbour resized when
        parsed at 512; see :meth:`preprocess` for ``native_size``)."""
        logits = self.model(self.preprocess(image, native_size=native_size).to(self.device))
        labels = logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
        height, width = image.shape[:2]
        if (height, width) != labels.shape:
            labels = np.asarray(Image.fromarray(labels).resize((width, height), Image.NEAREST))
        return labels
