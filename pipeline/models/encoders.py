"""MSCL's encoders (../shared/MSCL.md, sections 1-2).

- RGB: torchvision's `r3d_18` (the paper's backbone), or `CompactR3D`, the same 3D ResNet shape
  with a chosen width and depth for CPU runs. torchvision's `VideoResNet` fixes its widths at
  64-512, hence our own few lines for the compact one.
- Flow: a ResNet whose convolutions are 2D only (1x3x3) at a quarter of the RGB width (the
  authors' 16/32/64/128 next to r3d_18), with a stem of time stride 2 and time kept to the end, so
  a clip of T flow frames gives ceil(T/2) time steps, as many as the RGB encoder's stage 2 (LMCL
  pairs them step by step). Two inputs (`dataset.flow_input`): "uv", the (u, v) field, through a
  (2, 7, 7) stem so each step sees two flow frames (an odd clip gets a still frame appended); or
  "colour", the authors' colour-wheel image, through their (1, 7, 7) stem, which reads flow frames
  0, 2, 4, ... and skips the odd ones.
- `Encoder`: either backbone, plus the MLP projection head (MoCo v2's Linear-ReLU-Linear to 128, as
  the authors', or with batch norm after the first layer, as in SimCLR and MoCo v3: `head_bn`;
  L2-normalised by the loss) on the globally pooled last stage, and the time-keeping local features LMCL needs:
  for RGB an FPN-style neck over stages 2-4 at stage 2's resolution, for flow its last stage; both
  pooled over space and projected to `local_dim`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.video import r3d_18

Triple = tuple[int, int, int]


class BasicBlock3d(nn.Module):
    """Two convolutions with batch norm and a residual connection (ResNet's basic block, in 3D)."""

    def __init__(self, cin: int, cout: int, stride: Triple, kernel: Triple):
        super().__init__()
        pad = tuple(k // 2 for k in kernel)
        self.conv1 = nn.Conv3d(cin, cout, kernel, stride, pad, bias=False)
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = nn.Conv3d(cout, cout, kernel, 1, pad, bias=False)
        self.bn2 = nn.BatchNorm3d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != (1, 1, 1) or cin != cout:
            self.downsample = nn.Sequential(nn.Conv3d(cin, cout, 1, stride, bias=False), nn.BatchNorm3d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet3d(nn.Module):
    """A stem and four stages of basic blocks; `stages(x)` returns every stage's output."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], blocks: tuple[int, ...], *, stem_kernel: Triple,
                 stem_stride: Triple, kernel: Triple, strides: tuple[Triple, ...]):  # fmt: skip
        super().__init__()
        pad = tuple(k // 2 if s == 1 else (k - 1) // 2 for k, s in zip(stem_kernel, stem_stride, strict=True))
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, widths[0], stem_kernel, stem_stride, pad, bias=False), nn.BatchNorm3d(widths[0]), nn.ReLU(inplace=True)
        )  # fmt: skip
        layers, cin = [], widths[0]
        for width, count, stride in zip(widths, blocks, strides, strict=True):
            layers.append(nn.Sequential(*[BasicBlock3d(cin if i == 0 else width, width, stride if i == 0 else (1, 1, 1), kernel) for i in range(count)]))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.widths = tuple(widths)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            out.append(x)
        return out


class CompactR3D(ResNet3d):
    """r3d_18's shape (3x3x3 convolutions, stem (3,7,7) stride (1,2,2), stages 2-4 halving time
    and space) at any width and depth: widths w, 2w, 4w, 8w."""

    def __init__(self, width: int = 16, blocks: tuple[int, ...] = (1, 1, 1, 1)):
        super().__init__(3, (width, 2 * width, 4 * width, 8 * width), blocks, stem_kernel=(3, 7, 7), stem_stride=(1, 2, 2),
                         kernel=(3, 3, 3), strides=((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)))  # fmt: skip


class TorchvisionR3D(nn.Module):
    """torchvision's r3d_18 (random weights: nothing is downloaded), read stage by stage. Its own
    module names are kept, so `self.net.state_dict()` loads strictly into `r3d_18()`."""

    def __init__(self):
        super().__init__()
        self.net = r3d_18(weights=None)
        self.widths = (64, 128, 256, 512)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.net.stem(x)
        out = []
        for layer in (self.net.layer1, self.net.layer2, self.net.layer3, self.net.layer4):
            x = layer(x)
            out.append(x)
        return out


FlowInput = Literal["uv", "colour"]
FLOW_CHANNELS = {"uv": 2, "colour": 3}  # per input of schemas.params.FLOW_INPUTS


class FlowResNet(ResNet3d):
    """2D-only ResNet over (C, T, H, W) flow: (1,3,3) convolutions, time halved once by the stem, to
    ceil(T/2) steps. "uv": (u, v) through a (2, 7, 7) stem; "colour": 3 channels through (1, 7, 7)."""

    def __init__(self, widths: tuple[int, int, int, int], blocks: tuple[int, ...] = (2, 2, 2, 2), flow_input: FlowInput = "uv"):
        if flow_input not in FLOW_CHANNELS:
            raise ValueError(f"unknown flow input {flow_input!r}; allowed: {', '.join(FLOW_CHANNELS)}")
        stem_time = 2 if flow_input == "uv" else 1
        super().__init__(FLOW_CHANNELS[flow_input], widths, blocks, stem_kernel=(stem_time, 7, 7), stem_stride=(2, 2, 2),
                         kernel=(1, 3, 3), strides=((1, 1, 1), (1, 2, 2), (1, 2, 2), (1, 2, 2)))  # fmt: skip
        self.flow_input = flow_input

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.flow_input == "uv" and x.shape[2] % 2:
            x = F.pad(x, (0, 0, 0, 0, 0, 1))  # a still flow frame, so the pair stem gives ceil(T/2) steps
        return super().stages(x)


def pooled(stages: list[torch.Tensor]) -> torch.Tensor:
    """The last stage's output averaged over time and space (B, C): the clip's feature for the
    projection head, retrieval, the linear probe and fine-tuning."""
    return stages[-1].mean(dim=(2, 3, 4))


def projection_head(dim: int, out: int = 128, batch_norm: bool = False) -> nn.Sequential:
    """MoCo v2's head, Linear(d, d) - ReLU - Linear(d, out), optionally with batch norm after the first layer."""
    norm = [nn.BatchNorm1d(dim)] if batch_norm else []
    return nn.Sequential(nn.Linear(dim, dim), *norm, nn.ReLU(inplace=True), nn.Linear(dim, out))


class RGBNeck(nn.Module):
    """FPN-style top-down sum of stages 2-4 at stage 2's resolution, pooled over space: (B, C, T2)."""

    def __init__(self, widths: tuple[int, ...], dim: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv3d(w, dim, 1) for w in widths[1:])

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        top = None
        for stage, lateral in reversed(list(zip(stages[1:], self.lateral, strict=True))):
            level = lateral(stage)
            if top is not None:
                level = level + nn.functional.interpolate(top, size=level.shape[2:], mode="nearest")
            top = level
        return top.mean(dim=(3, 4))


class Encoder(nn.Module):
    """Backbone + projection head + local (time-keeping) features. `forward` returns the projected
    clip embedding (B, embed) and, if asked, the local features (B, local_dim, T')."""

    def __init__(self, backbone: nn.Module, modality: Literal["rgb", "flow"], embed_dim: int = 128, local_dim: int | None = 128,
                 head_bn: bool = False):  # fmt: skip
        super().__init__()
        self.backbone = backbone
        self.modality = modality
        widths = backbone.widths
        self.head = projection_head(widths[-1], embed_dim, head_bn)
        self.local: nn.Module | None = None  # only built when LMCL uses it (DDP wants no idle parameters)
        if local_dim is not None:
            self.local = RGBNeck(widths, local_dim) if modality == "rgb" else nn.Conv1d(widths[-1], local_dim, 1)

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The backbone alone, for fine-tuning elsewhere: r3d_18's loads strictly into torchvision's."""
        return {k: v.detach().clone() for k, v in exported_module(self.backbone).state_dict().items()}

    def forward(self, x: torch.Tensor, local: bool = False):
        stages = self.backbone.stages(x)
        embedding = self.head(pooled(stages))
        if not local:
            return embedding, None
        if self.local is None:
            raise ValueError("this encoder was built without local features (local_dim=None)")
        if self.modality == "rgb":
            return embedding, self.local(stages)
        return embedding, self.local(stages[-1].mean(dim=(3, 4)))


def exported_module(backbone: nn.Module) -> nn.Module:
    """The module whose state dict is the exported RGB encoder: torchvision's own r3d_18 inside our
    wrapper (so keys match torchvision's), or the compact backbone itself."""
    return backbone.net if isinstance(backbone, TorchvisionR3D) else backbone


def rgb_backbone(name: Literal["compact", "r3d_18"], width: int, blocks: tuple[int, ...]) -> nn.Module:
    if name == "r3d_18":
        return TorchvisionR3D()
    if name == "compact":
        return CompactR3D(width, blocks)
    raise ValueError(f"unknown RGB encoder {name!r}; allowed: compact, r3d_18")


def flow_backbone(rgb_widths: tuple[int, ...], ratio: float, blocks: tuple[int, ...] = (2, 2, 2, 2),
                  flow_input: FlowInput = "uv") -> FlowResNet:  # fmt: skip
    widths = tuple(max(4, round(w * ratio)) for w in rgb_widths)
    return FlowResNet(widths, blocks, flow_input)  # type: ignore[arg-type]
