"""Small monocular depth networks for the examples: an encoder-decoder on a torchvision backbone.

Output convention: ``DepthNet(image)`` returns **log depth** ``float [B,1,H,W]`` at the input's size (larger =
farther; defined up to an additive constant, since ordinal pairs fix no scale). Pass it to
``dynocc_data.losses.ranking_loss`` / ``whdr`` as it is (``inverse=False``); ``exp()`` of it is a depth map up to
a scale factor. Input: ``float32 [B,3,H,W]`` RGB in ``[0, 1]`` (``create_transform(..., normalize=False)``); the
ImageNet normalisation happens inside the network, so pretrained and random encoders take the same input.

Encoders (``arch``), all from ``torchvision.models``, random init unless ``pretrained=True``:

=========================  ==============================================  ================================
arch                       features used (stride: channels)                notes
=========================  ==============================================  ================================
``resnet18``               2: 64, 4: 64, 8: 128, 16: 256, 32: 512          the usual choice on a GPU
``resnet34``               2: 64, 4: 64, 8: 128, 16: 256, 32: 512
``mobilenet_v3_small``     2: 16, 4: 16, 8: 24, 16: 48, 32: 576            fast on a CPU (``--quick``)
``mobilenet_v3_large``     2: 16, 4: 24, 8: 40, 16: 112, 32: 960
=========================  ==============================================  ================================

The decoder is a feature pyramid (as in FPN / the MiDaS and MegaDepth decoders, reduced): 1x1 lateral
convolutions to ``width`` channels (``width/2`` at stride 4 and ``width/4`` at stride 2, where pixels are many),
top-down nearest upsampling and addition, a 3x3 refinement at every level down to stride 2, bilinear upsampling
to the input size, concatenation with a 3x3 convolution of the image
itself (so that depth edges stay as sharp as the image's: ordinal pairs sit a few pixels from them), and a
two-layer 3x3 head. Fully convolutional: any input size works.

``pretrained=True`` asks torchvision for the ImageNet weights, which it loads from the torch hub cache
(``~/.cache/torch/hub/checkpoints`` or ``$TORCH_HOME``) and would otherwise download: :func:`build_model` refuses
when they are not cached, so nothing is ever downloaded at run time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

__all__ = ["ARCHS", "DepthNet", "ModelConfig", "build_model", "cached_weights"]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _resnet_stages(net: nn.Module) -> list[nn.Module]:
    """ResNet as five stages ending at strides 2, 4, 8, 16, 32."""
    return [nn.Sequential(net.conv1, net.bn1, net.relu), nn.Sequential(net.maxpool, net.layer1), net.layer2,
            net.layer3, net.layer4]


def _downsamples(block: nn.Module) -> int:
    """The stride of a block: the product of the strides of its convolutions."""
    stride = 1
    for m in block.modules():
        if isinstance(m, nn.Conv2d):
            stride *= m.stride[0]
    return stride


def _mobilenet_stages(net: nn.Module) -> list[nn.Module]:
    """MobileNetV3 ``features`` split after the last block of each stride (2, 4, 8, 16, 32)."""
    blocks = list(net.features)
    strides = [_downsamples(b) for b in blocks]
    ends, total = [], 1
    for i, s in enumerate(strides):
        total *= s
        if total >= 2 and (i + 1 == len(blocks) or strides[i + 1] > 1):
            ends.append(i + 1)
    starts = [0] + ends[:-1]
    return [nn.Sequential(*blocks[a:b]) for a, b in zip(starts, ends)]


@dataclass(frozen=True)
class _Arch:
    """How to build one encoder: the torchvision constructor, its weights enum name, the stage splitter."""

    ctor: Callable[..., nn.Module]
    weights: str
    stages: Callable[[nn.Module], list[nn.Module]]


ARCHS: dict[str, _Arch] = {
    "resnet18": _Arch(torchvision.models.resnet18, "ResNet18_Weights", _resnet_stages),
    "resnet34": _Arch(torchvision.models.resnet34, "ResNet34_Weights", _resnet_stages),
    "mobilenet_v3_small": _Arch(torchvision.models.mobilenet_v3_small, "MobileNet_V3_Small_Weights",
                                _mobilenet_stages),
    "mobilenet_v3_large": _Arch(torchvision.models.mobilenet_v3_large, "MobileNet_V3_Large_Weights",
                                _mobilenet_stages),
}


@dataclass(frozen=True)
class ModelConfig:
    """Options of :func:`build_model` (stored in checkpoints so that a run can be resumed or evaluated)."""

    arch: str = "resnet18"
    width: int = 64  #: decoder channels
    pretrained: bool = False  #: ImageNet encoder weights (must already be in the torch hub cache)
    bn_momentum: float | None = 0.1  #: BatchNorm momentum everywhere (torchvision's MobileNetV3 uses 0.01)


def cached_weights(arch: str) -> Path | None:
    """The cached ImageNet checkpoint of ``arch`` in the torch hub cache, or ``None`` when it is not there."""
    weights = getattr(torchvision.models, ARCHS[arch].weights).DEFAULT
    name = os.path.basename(weights.url)
    path = Path(torch.hub.get_dir()) / "checkpoints" / name
    return path if path.is_file() else None


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    """Convolution, BatchNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class DepthNet(nn.Module):
    """Encoder (five stages, strides 2..32) + feature-pyramid decoder + full-resolution refinement, predicting
    log depth at the input size."""

    def __init__(self, stages: list[nn.Module], channels: list[int], width: int = 64) -> None:
        """Wrap encoder ``stages`` whose outputs have ``channels`` channels at strides 2, 4, 8, 16, 32."""
        super().__init__()
        self.encoder = nn.ModuleList(stages)
        # decoder channels: width//4 at stride 2, width//2 at stride 4, width from stride 8 on (cheap fine levels)
        dec = [max(8, width // 4), max(8, width // 2)] + [width] * (len(channels) - 2)
        self.lateral = nn.ModuleList(nn.Conv2d(c, d, 1) for c, d in zip(channels, dec))
        self.reduce = nn.ModuleList(nn.Conv2d(dec[i + 1], dec[i], 1) if dec[i + 1] != dec[i] else nn.Identity()
                                    for i in range(len(dec) - 1))
        self.refine = nn.ModuleList(_conv_bn_relu(d, d) for d in dec)
        fine = max(8, width // 8)
        self.image_conv = _conv_bn_relu(3, fine)  # full-resolution detail, so depth edges stay sharp
        self.head = nn.Sequential(_conv_bn_relu(dec[0] + fine, fine), nn.Conv2d(fine, 1, 3, padding=1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``float [B,3,H,W]`` RGB in [0, 1] -> log depth ``[B,1,H,W]`` (larger = farther)."""
        x = (image - self.mean) / self.std
        feats = []
        for stage in self.encoder:
            feats.append(stage(feats[-1] if feats else x))
        top = self.refine[-1](self.lateral[-1](feats[-1]))
        for i in reversed(range(len(feats) - 1)):
            top = F.interpolate(self.reduce[i](top), size=feats[i].shape[-2:], mode="nearest")
            top = self.refine[i](self.lateral[i](feats[i]) + top)
        top = F.interpolate(top, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(torch.cat([top, self.image_conv(x)], dim=1)).float()


def build_model(config: ModelConfig | None = None) -> DepthNet:
    """A :class:`DepthNet` for ``config`` (random init unless ``pretrained``; weights never downloaded)."""
    cfg = config or ModelConfig()
    if cfg.arch not in ARCHS:
        raise ValueError(f"unknown arch {cfg.arch!r}; choose one of {', '.join(ARCHS)}")
    spec = ARCHS[cfg.arch]
    weights = None
    if cfg.pretrained:
        path = cached_weights(cfg.arch)
        if path is None:
            raise FileNotFoundError(f"--pretrained: no cached ImageNet weights for {cfg.arch} under "
                                    f"{torch.hub.get_dir()}/checkpoints (this example never downloads; put them "
                                    "there or train from random init)")
        weights = getattr(torchvision.models, spec.weights).DEFAULT
        logger.info("loading ImageNet weights for %s from %s", cfg.arch, path)
    stages = spec.stages(spec.ctor(weights=weights))
    with torch.no_grad():
        probe, channels = torch.zeros(1, 3, 64, 64), []
        for stage in stages:
            stage.eval()
            probe = stage(probe)
            channels.append(int(probe.shape[1]))
    net = DepthNet(stages, channels, cfg.width)
    if cfg.bn_momentum is not None:
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = cfg.bn_momentum
    return net.train()
