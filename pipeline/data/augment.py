"""Augmentations of one view: the same geometry for its RGB and its flow, colour for RGB only.

Geometry changes what a flow vector means, so it is applied to flow as a vector field, not as an
image: a resize by (sx, sy) scales (u, v) by (sx, sy), and a horizontal flip negates u (the
authors' release forgets this; ../shared/MSCL.md, section 3). Resampling and colour come from
torchvision (`resized_crop`, `hflip`, `ColorJitter`, `RandomGrayscale`, `GaussianBlur`); the crop box
comes from torchvision's own `RandomResizedCrop.get_params`.

torchvision's random transforms draw from the process-wide torch generator and take no generator of
their own. `ViewAugment` therefore runs them in a forked RNG seeded by the caller, so a view's
augmentation depends on its seed only: never on the worker, on what ran before, or on the caller's
RNG, which is left untouched. The crop box and the flip are drawn first (the flip's number even when
its probability is 0 or 1), so switching a transform on or off never moves a view's geometry.

Layouts: RGB (T, 3, H, W) uint8 and flow (T, 2, H, W) float, time first as torchvision expects for
video; the dataset moves channels first at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.transforms import RandomResizedCrop, v2
from torchvision.transforms.v2 import functional as F

from schemas.params import CAMERA_COMPENSATIONS, FLOW_NORMS, DatasetParams

# FRA angles: b = (0.2 + 0.2k) * pi for k in 0..7 (36 to 288 degrees; never 0, so never the identity).
FRA_ANGLES = tuple((0.2 + 0.2 * k) * math.pi for k in range(8))


@dataclass(frozen=True)
class ViewGeometry:
    """Where a view's crop came from: box in input pixels and whether it was flipped."""

    top: int
    left: int
    height: int
    width: int
    flipped: bool


def resized_crop_flow(flow: torch.Tensor, box: tuple[int, int, int, int], size: tuple[int, int]) -> torch.Tensor:
    """Flow (T, 2, H, W) cropped to `box` and resized to `size`, its vectors scaled by the resize
    factors: out_w / width for u, out_h / height for v."""
    top, left, height, width = box
    out_h, out_w = size
    # Crop before leaving float16, so only the kept pixels are converted.
    flow = F.resize(flow[..., top : top + height, left : left + width].float(), [out_h, out_w], antialias=True)
    scale = torch.tensor([out_w / width, out_h / height], dtype=flow.dtype).view(1, 2, 1, 1)
    return flow * scale


def hflip(rgb: torch.Tensor, flow: torch.Tensor):
    """Mirror left-right. A vector pointing right now points left: u is negated, v kept."""
    flow = F.hflip(flow)
    sign = torch.tensor([-1.0, 1.0], dtype=flow.dtype).view(1, 2, 1, 1)
    return F.hflip(rgb), flow * sign


def rotate_vectors(flow: torch.Tensor, angle: float) -> torch.Tensor:
    """FRA: rotate every flow vector by `angle` radians (the map itself stays where it is):
    u' = cos(b)u - sin(b)v, v' = sin(b)u + cos(b)v. Flow (..., 2, H, W)."""
    c, s = math.cos(angle), math.sin(angle)
    u, v = flow.unbind(-3)
    return torch.stack([c * u - s * v, s * u + c * v], dim=-3)


def normalise_flow(flow: torch.Tensor, mode: str, bound: float = 20.0) -> torch.Tensor:
    """max_magnitude (and frame_max_magnitude, which the caller applies to the whole frame before
    cropping): each frame divided by its largest vector's length, so every frame's longest vector
    has length 1 and a still frame stays 0; fixed: divided by `bound` and clipped to [-1, 1]; none:
    pixels of the output crop. Flow (T, 2, H, W)."""
    if mode == "none":
        return flow
    if mode == "fixed":
        return (flow / bound).clamp_(-1.0, 1.0)
    if mode in ("max_magnitude", "frame_max_magnitude"):
        top = flow.square().sum(1).sqrt().amax(dim=(1, 2)).clamp_min(1e-6)
        return flow / top.view(-1, 1, 1, 1)
    raise ValueError(f"unknown flow normalisation {mode!r}; allowed: {', '.join(FLOW_NORMS)}")


def subtract_camera(flow: torch.Tensor, mode: str) -> torch.Tensor:
    """Flow (T, 2, H, W) without the camera's motion, as far as `mode` models it: "median" removes
    each frame's median vector (a pan, where the background covers most of the frame: TSN's warped
    flow in its simplest, translation-only form), taken over every 4th pixel in each direction (the
    same pan, 20x faster than over every pixel); "none" keeps the flow as it is."""
    if mode == "none":
        return flow
    if mode == "median":
        flow = flow.float()
        return flow - flow[..., ::4, ::4].flatten(2).median(dim=2).values[..., None, None]
    raise ValueError(f"unknown camera compensation {mode!r}; allowed: {', '.join(CAMERA_COMPENSATIONS)}")


def view_flow(flow: torch.Tensor, box: tuple[int, int, int, int], size: int, norm: str, bound: float = 20.0,
              camera: str = "none") -> torch.Tensor:  # fmt: skip
    """Stored flow (T, 2, H, W) as the flow encoder reads a view: the camera's motion removed
    (`camera`, over the whole stored frame), `box` resized to size x size with the vectors scaled,
    and normalised by `norm` (frame_max_magnitude over the whole stored frame before the crop, as
    the authors do; the other modes over the crop)."""
    flow = subtract_camera(flow, camera)
    whole_frame = norm == "frame_max_magnitude"
    if whole_frame:
        flow = normalise_flow(flow.float(), norm)
    flow = resized_crop_flow(flow, box, (size, size))
    return flow if whole_frame else normalise_flow(flow, norm, bound)


def seed_cpu(seed: int) -> None:
    """Seed the CPU generator the transforms draw from. Not `torch.manual_seed`, which also seeds
    every accelerator (a side effect fork_rng(devices=[]) would not undo) and, on this torch,
    formats a stack trace each call: 13% of the loader's time (bench/storage.py)."""
    torch.default_generator.manual_seed(seed)


class ViewAugment:
    """One view's augmentation under `DatasetParams`: crop box, flip, colour (RGB only), flow scaling."""

    def __init__(self, params: DatasetParams):
        self.params = params
        size = params.crop_size
        kernel = max(3, int(0.1 * size) // 2 * 2 + 1)  # about 10% of the crop, odd (MoCo v2 / SimCLR)
        brightness, contrast, saturation, hue = params.color_jitter
        self.colour = v2.Compose(
            [
                v2.RandomApply([v2.ColorJitter(brightness, contrast, saturation, hue)], p=params.color_jitter_p),
                v2.RandomGrayscale(p=params.grayscale_p),
                v2.RandomApply([v2.GaussianBlur(kernel, sigma=params.blur_sigma)], p=params.blur_p),
            ]
        )

    def __call__(self, rgb: torch.Tensor, flow: torch.Tensor | None, seed: int):
        """RGB (T, 3, H, W) uint8 and flow (T, 2, H, W) or None -> the augmented pair at the crop
        size, and the geometry used. Depends only on the inputs and `seed`."""
        p = self.params
        with torch.random.fork_rng(devices=[]):
            seed_cpu(seed)
            box = RandomResizedCrop.get_params(rgb, list(p.crop_scale), list(p.crop_ratio))
            flipped = bool(torch.rand(()) < p.flip)
            if flow is None:  # RGB only: the same geometry as if there were flow
                rgb = F.resized_crop(rgb, *box, [p.crop_size, p.crop_size], antialias=True)
                rgb = F.hflip(rgb) if flipped else rgb
            else:
                rgb = F.resized_crop(rgb, *box, [p.crop_size, p.crop_size], antialias=True)
                flow = view_flow(flow, box, p.crop_size, p.flow_norm, p.flow_bound, p.flow_camera)
                if flipped:
                    rgb, flow = hflip(rgb, flow)
            rgb = self.colour(rgb)
        return rgb, flow, ViewGeometry(*box, flipped)
