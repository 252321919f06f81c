"""Augmentations of one view: the same geometry for its RGB and its flow, colour for RGB only.

Geometry changes what a flow vector means, so it is applied to flow as a vector field, not as an
image: a resize by (sx, sy) scales (u, v) by (sx, sy), and a horizontal flip negates u (the
authors' release forgets this; ../shared/MSCL.md, section 3). Resampling and colour come from
torchvision (`resized_crop`, `hflip`, `ColorJitter`, `RandomGrayscale`, `GaussianBlur`); the crop box
comes from torchvision's own `RandomResizedCrop.get_params`.

torchvision's random transforms draw from the process-wide torch generator and take no generator of
their own. `ViewAugment.draw` therefore draws a view's choices (`ViewDraws`: crop box, flip, colour
jitter order and factors, grayscale, blur sigma) in a forked RNG seeded by the caller, through the
transforms' own `get_params`/`make_params` in the order torchvision's `Compose` of them draws, so a
view's augmentation depends on its seed only: never on the worker, on what ran before, or on the
caller's RNG, which is left untouched. The crop box and the flip are drawn first (the flip's number
even when its probability is 0 or 1), so switching a transform on or off never moves a view's geometry.

The draws are small and travel with the stored-resolution clips; `ViewAugment.apply` applies them to
one view with torchvision's kernels (the per-sample path), and `pipeline/data/batch_augment.py`
applies a whole batch's at once on the training device (the path the trainer takes).

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


COLOUR_OPS = ("brightness", "contrast", "saturation", "hue")  # ColorJitter's fn_idx 0..3


@dataclass(frozen=True)
class ViewDraws:
    """Every random choice of one view's augmentation. `jitter` is None when colour jitter was not
    drawn, else (order of the four ops as ColorJitter's fn_idx, and each op's factor, None for an op
    the params switch off); `blur_sigma` is 0 when no blur was drawn."""

    box: tuple[int, int, int, int]  # top, left, height, width in stored pixels
    flipped: bool
    jitter: tuple[tuple[int, int, int, int], tuple[float | None, ...]] | None
    grayscale: bool
    blur_sigma: float


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
    pixels of the output crop. Flow (..., T, 2, H, W)."""
    if mode == "none":
        return flow
    if mode == "fixed":
        return (flow / bound).clamp_(-1.0, 1.0)
    if mode in ("max_magnitude", "frame_max_magnitude"):
        u, v = flow.unbind(-3)  # the longest vector's length: the root of the largest u^2 + v^2 (the same number)
        top = (u * u + v * v).amax(dim=(-2, -1)).sqrt().clamp_min(1e-6)
        return flow / top[..., None, None, None]
    raise ValueError(f"unknown flow normalisation {mode!r}; allowed: {', '.join(FLOW_NORMS)}")


def subtract_camera(flow: torch.Tensor, mode: str) -> torch.Tensor:
    """Flow (T, 2, H, W) without the camera's motion, as far as `mode` models it: "median" removes
    each frame's median vector (a pan, where the background covers most of the frame: TSN's warped
    flow in its simplest, translation-only form), taken over every 4th pixel in each direction (the
    same pan, 20x faster than over every pixel); "none" keeps the flow as it is. Any leading dims."""
    if mode == "none":
        return flow
    if mode == "median":
        flow = flow.float()
        return flow - flow[..., ::4, ::4].flatten(-2).median(dim=-1).values[..., None, None]
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


NEUTRAL_FACTORS = (1.0, 1.0, 1.0, 0.0)  # each colour op's factor that changes nothing


def jitter_ops(params: DatasetParams) -> tuple[bool, bool, bool, bool]:
    """Which of ColorJitter's four ops `params.color_jitter` switches on (a 0 switches one off)."""
    jitter = v2.ColorJitter(*params.color_jitter)
    return tuple(getattr(jitter, op) is not None for op in COLOUR_OPS)


def blur_kernel_size(crop_size: int) -> int:
    """The blur's kernel: about 10% of the crop, odd (MoCo v2 / SimCLR)."""
    return max(3, int(0.1 * crop_size) // 2 * 2 + 1)


class ViewAugment:
    """One view's augmentation under `DatasetParams`: crop box, flip, colour (RGB only), flow scaling."""

    def __init__(self, params: DatasetParams):
        self.params = params
        brightness, contrast, saturation, hue = params.color_jitter
        self.jitter = v2.ColorJitter(brightness, contrast, saturation, hue)
        self.blur = v2.GaussianBlur(blur_kernel_size(params.crop_size), sigma=params.blur_sigma)

    def draw(self, seed: int, height: int, width: int) -> ViewDraws:
        """The view's random choices for a stored frame of `height` x `width`: the numbers
        torchvision's RandomResizedCrop, a flip, RandomApply(ColorJitter), RandomGrayscale and
        RandomApply(GaussianBlur) would draw, in their order, from a generator seeded with `seed`."""
        p = self.params
        with torch.random.fork_rng(devices=[]):
            seed_cpu(seed)
            box = RandomResizedCrop.get_params(torch.empty(1).expand(1, height, width), list(p.crop_scale), list(p.crop_ratio))
            flipped = bool(torch.rand(()) < p.flip)
            jitter = None
            if not torch.rand(1) >= p.color_jitter_p:  # RandomApply's test
                made = self.jitter.make_params([])
                jitter = (tuple(int(k) for k in made["fn_idx"]), tuple(made[f"{op}_factor"] for op in COLOUR_OPS))
            grayscale = not torch.rand(1) >= p.grayscale_p  # RandomGrayscale's
            sigma = float(self.blur.make_params([])["sigma"][0]) if not torch.rand(1) >= p.blur_p else 0.0
        return ViewDraws(tuple(int(x) for x in box), flipped, jitter, grayscale, sigma)

    def apply(self, rgb: torch.Tensor, flow: torch.Tensor | None, draws: ViewDraws):
        """RGB (T, 3, H, W) uint8 and flow (T, 2, H, W) or None, augmented as `draws` say with
        torchvision's kernels, one view at a time: the per-sample path."""
        p = self.params
        rgb = F.resized_crop(rgb, *draws.box, [p.crop_size, p.crop_size], antialias=True)
        if flow is not None:
            flow = view_flow(flow, draws.box, p.crop_size, p.flow_norm, p.flow_bound, p.flow_camera)
        if draws.flipped:
            rgb, flow = (F.hflip(rgb), None) if flow is None else hflip(rgb, flow)
        if draws.jitter is not None:
            order, factors = draws.jitter
            kernels = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
            for k in order:
                if factors[k] is not None:
                    rgb = kernels[k](rgb, factors[k])
        if draws.grayscale:
            rgb = F.rgb_to_grayscale(rgb, num_output_channels=3)
        if draws.blur_sigma > 0:
            rgb = F.gaussian_blur(rgb, self.blur.kernel_size, [draws.blur_sigma, draws.blur_sigma])
        return rgb, flow

    def __call__(self, rgb: torch.Tensor, flow: torch.Tensor | None, seed: int):
        """RGB (T, 3, H, W) uint8 and flow (T, 2, H, W) or None -> the augmented pair at the crop
        size, and the geometry used. Depends only on the inputs and `seed`."""
        draws = self.draw(seed, *rgb.shape[-2:])
        rgb, flow = self.apply(rgb, flow, draws)
        return rgb, flow, ViewGeometry(*draws.box, draws.flipped)
