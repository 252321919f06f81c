"""A whole batch's augmentation in one pass, on whatever device the batch is on (the trainer's GPU,
or the CPU): the per-sample path of `pipeline/data/augment.py`, batched.

The loader's workers only read: they send each view's clip at the stored resolution and its draws
(`ViewDraws`: crop box, flip, colour jitter, grayscale, blur; and the sample's FRA rotation), and
`augment_batch` applies them to every clip of the batch at once:

- **Crop, resize and flip** as two matrix products per clip, out = Wy @ frame @ Wx^T, with Wy and Wx
  the weights of torch's antialiased bilinear resize (`F.interpolate(..., antialias=True)`, read off
  by resizing an identity matrix, so they are torch's own numbers), placed at the crop box's rows and
  columns and reversed for a flip. They are banded (a few taps per output pixel), so each product is
  a few gathers and multiply-adds, the same for every clip whatever its box: one batched pass where
  a loop of `resized_crop` would take one call per view. The same weights move RGB and flow; the flow
  vectors are then scaled by the resize factors and u negated under a flip.
- **Colour** (ColorJitter's four ops in each view's own order, grayscale, Gaussian blur) with
  per-view factors, each op written as torchvision's uint8 kernel computes it (the same formulas,
  truncations and roundings; hue through torchvision's own HSV conversion), applied to the views
  that drew it. The blur is separable (two 1-D passes of torchvision's kernel): 5x fewer operations
  than torchvision's 2-D convolution at 112 px.
- **Flow**: camera pan removed and `frame_max_magnitude` normalisation over each whole stored frame
  before the crop (per group of equal stored size, so padding never counts), the other
  normalisations on the crop, then FRA's rotation by each sample's angle.

Against the per-sample path (tests/test_batch_augment.py): the draws are the same numbers; flow
agrees to float32 rounding (the sums run in another order); RGB differs by at most a few levels in
a small share of pixels, because torch resizes uint8 with fixed-point weights where this pass uses
float32 ones and rounds once, and the separable blur rounds differently from the 2-D one.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as nnf
from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

from pipeline.data.augment import FRA_ANGLES, blur_kernel_size, jitter_ops, normalise_flow, subtract_camera
from schemas.params import DatasetParams

# FRA's rotation as float32 cos and sin, exactly the scalars the per-sample path multiplies by.
FRA_COS = torch.tensor([math.cos(a) for a in FRA_ANGLES], dtype=torch.float32)
FRA_SIN = torch.tensor([math.sin(a) for a in FRA_ANGLES], dtype=torch.float32)
GRAY = (0.2989, 0.587, 0.114)  # torchvision's luma weights


@functools.lru_cache(maxsize=4096)
def resize_weights(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float64 weights of torch's antialiased bilinear resize of a line of n_in pixels
    to n_out: row i holds the contribution of each input pixel to output pixel i."""
    eye = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, 1, n_in)
    return nnf.interpolate(eye, size=(1, n_out), mode="bilinear", antialias=True, align_corners=False)[:, 0, 0, :].T.contiguous()


def fixed_point(weights: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Weights as torch's uint8 resize uses them: integers at the most bits of precision that keep
    the largest below 2^15, rounded half away from zero; and that precision."""
    top = float(weights.max())
    precision = 0
    while precision < 22 and int(0.5 + top * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = weights * (1 << precision)
    return torch.where(scaled < 0, scaled - 0.5, scaled + 0.5).trunc().to(torch.int32), precision


@functools.lru_cache(maxsize=8192)
def _taps(length: int, flipped: bool, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """One crop's band along one axis: for each output pixel, the input pixels (counted from the
    crop's first, (n_out, K)) of its K taps, their float32 weights and their fixed-point weights, K
    as wide as this resize needs; and the fixed point's precision."""
    weights = resize_weights(length, n_out)
    if flipped:
        weights = weights.flip(0)
    nonzero = weights != 0
    first = nonzero.int().argmax(1)
    last = length - 1 - nonzero.int().flip(1).argmax(1)
    local = first[:, None] + torch.arange(int((last - first).max()) + 1)
    inside = local < length
    local = local.clamp_max(length - 1)
    fixed, precision = fixed_point(weights)
    taps = torch.where(inside, weights.gather(1, local), 0.0)
    return local, taps.float(), torch.where(inside, fixed.gather(1, local), 0), precision


def band(starts: torch.Tensor, lengths: torch.Tensor, flipped: torch.Tensor, n_out: int) -> dict[str, torch.Tensor]:
    """For each of N crops along one axis (first pixel, length, flipped), the input pixel and
    weights of each of the K taps of every output pixel: (N, n_out, K) `index`, `weight` (float32)
    and `fixed` (int32, at `precision` bits, (N,)), K the widest band of the batch (narrower bands
    padded with zero weights)."""
    taps = [_taps(length, flip, n_out) for length, flip in zip(lengths.tolist(), flipped.tolist(), strict=True)]
    width = max(local.shape[1] for local, *_ in taps)
    index = torch.zeros(len(taps), n_out, width, dtype=torch.int64)
    weight = torch.zeros(len(taps), n_out, width, dtype=torch.float32)
    fixed = torch.zeros(len(taps), n_out, width, dtype=torch.int32)
    for n, ((local, w, f, _), start) in enumerate(zip(taps, starts.tolist(), strict=True)):
        k = local.shape[1]
        index[n, :, :k], index[n, :, k:] = local + start, start
        weight[n, :, :k], fixed[n, :, :k] = w, f
    precision = torch.tensor([p for *_, p in taps], dtype=torch.int32)
    return {"index": index, "weight": weight, "fixed": fixed, "precision": precision}


def geometry(crop: torch.Tensor, flip: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
    """The banded resize weights of N views' crop boxes (N, 4: top, left, height, width) and flips
    (N,), to `size` x `size`: `row_*` (vertical) and `col_*` (horizontal, reversed when flipped)."""
    crop, flip = crop.cpu(), flip.cpu()
    rows = band(crop[:, 0], crop[:, 2], torch.zeros_like(flip), size)
    cols = band(crop[:, 1], crop[:, 3], flip, size)
    return {**{f"row_{k}": v for k, v in rows.items()}, **{f"col_{k}": v for k, v in cols.items()}}


def _pass(x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """One separable pass over the second axis of (N, L, R): out[n, i] = sum_k weight[n, i, k] *
    x[n, index[n, i, k]], for every one of the R values of a line at once (whole lines are
    selected, so the copies are contiguous). (N, L, R) -> (N, S, R)."""
    n, length, rest = x.shape
    flat = x.reshape(n * length, rest)
    offset = (torch.arange(n, device=x.device) * length).view(n, 1)
    out = None
    for k in range(index.shape[2]):
        term = flat.index_select(0, (index[:, :, k] + offset).flatten()).view(n, -1, rest) * weight[:, :, k, None]
        out = term if out is None else out.add_(term)
    return out


def _separable(x: torch.Tensor, geo: dict[str, torch.Tensor], weights: str, between=None) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, S, S) by the `weights` ("weight" or "fixed") of `geo`, the horizontal
    pass first; `between(x, axis)` is applied to each pass's output."""
    n, c, h, w = x.shape
    x = _pass(x.permute(0, 3, 1, 2).reshape(n, w, c * h), geo["col_index"], geo[f"col_{weights}"])  # (N, S, C*H)
    x = between(x, "col") if between else x
    s = x.shape[1]
    x = x.view(n, s, c, h).permute(0, 3, 2, 1).reshape(n, h, c * s)  # rows first: (N, H, C*S)
    x = _pass(x, geo["row_index"], geo[f"row_{weights}"])  # (N, S, C*S)
    x = between(x, "row") if between else x
    return x.view(n, s, c, s).permute(0, 2, 1, 3)


def resample(x: torch.Tensor, geo: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N, C, H, W) float -> (N, C, S, S) float32: each view's crop resized (and flipped) by its
    weights, horizontal pass first as torch's separable resize."""
    return _separable(x.float(), geo, "weight")


def resample_pixels(x: torch.Tensor, geo: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N, C, H, W) uint8 -> (N, C, S, S) int32 pixel values, exactly as torch resizes uint8 images
    (`F.interpolate(..., antialias=True)` on uint8): fixed-point weights, each pass rounded (half up)
    and clamped to 0-255, the horizontal pass first."""

    def rounded(sums: torch.Tensor, axis: str) -> torch.Tensor:
        shift = geo[f"{axis}_precision"].view(-1, 1, 1)
        return ((sums + (1 << (shift - 1))) >> shift).clamp_(0, 255)

    return _separable(x.to(torch.int32), geo, "fixed", rounded)


def resample_by_view(x: torch.Tensor, crop: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """What `resample_pixels` (uint8 `x`) or `resample` (float `x`) computes, view by view with
    torch's own resize: (N, T, C, H, W) frames of any strides -> (N, T, C, S, S), a view of (N, C,
    T, S, S) memory. On a CPU this is the faster way: torch's kernels are fused and vectorised, and uint8 frames of 3
    channels laid out channels-last (as the store and the workers keep them) take its SIMD path, 8x
    faster at 112 px than the T*3 planes of a view in one call; the banded passes move every value
    through memory once per tap. It is also the reference the batched passes are tested against."""
    n, t, c = x.shape[:3]
    out = torch.empty(n, c, t, size, size, dtype=x.dtype if x.dtype == torch.uint8 else torch.float32, device=x.device)
    out = out.transpose(1, 2)  # laid out as the training batch is (channels before time): no copy to get there
    for i, ((top, left, height, width), flipped) in enumerate(zip(crop.tolist(), flip.tolist(), strict=True)):
        view = x[i, :, :, top : top + height, left : left + width]
        view = nnf.interpolate(view if x.dtype == torch.uint8 else view.float(), size=(size, size), mode="bilinear",
                               antialias=True, align_corners=False)  # fmt: skip
        out[i] = view.flip(-1) if flipped else view
    return out


# -- colour, as torchvision's uint8 kernels compute it (values kept as whole numbers in float32) --------


def _per_view(factor: torch.Tensor) -> torch.Tensor:
    return factor.view(-1, 1, 1, 1, 1)  # views are (N, T, 3, S, S)


def _gray(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb.unbind(dim=-3)
    return r.mul(GRAY[0]).add_(g, alpha=GRAY[1]).add_(b, alpha=GRAY[2]).unsqueeze(-3)


def _blend(image: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    ratio = _per_view(ratio)
    return torch.addcmul(image.mul(ratio), other, 1.0 - ratio).clamp_(0, 255).trunc_()


def brightness(rgb: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return rgb.mul(_per_view(factor)).clamp_(0, 255).trunc_()


def contrast(rgb: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = _gray(rgb).floor_().mean(dim=(-3, -2, -1), keepdim=True)  # each frame's own mean
    return _blend(rgb, mean, factor)


def saturation(rgb: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(rgb, _gray(rgb).floor_(), factor)


def hue(rgb: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    hsv = _rgb_to_hsv(rgb.mul(1.0 / 255))
    h, s, v = hsv.unbind(dim=-3)
    h = h.add(factor.view(-1, 1, 1, 1)).remainder_(1.0)
    return _hsv_to_rgb(torch.stack((h, s, v), dim=-3)).mul_(255 + 1.0 - 1e-3).trunc_()


def grayscale(rgb: torch.Tensor) -> torch.Tensor:
    return _gray(rgb).trunc_().expand_as(rgb)


def gaussian_blur(rgb: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Each view blurred with torchvision's kernel at its own sigma (reflect padding, rounded),
    as two 1-D passes."""
    n, t, c, h, w = rgb.shape
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    x = torch.linspace(-lim, lim, steps=kernel_size, dtype=torch.float32, device=rgb.device)
    kernel = torch.softmax(x.div(sigma.view(-1, 1).float()).pow(2).neg(), dim=1)  # (N, k)
    kernel = kernel.repeat_interleave(t * c, dim=0)
    half = kernel_size // 2
    planes = nnf.pad(rgb.reshape(1, n * t * c, h, w), [half, half, half, half], mode="reflect")
    planes = nnf.conv2d(planes, kernel.view(-1, 1, 1, kernel_size), groups=n * t * c)
    planes = nnf.conv2d(planes, kernel.view(-1, 1, kernel_size, 1), groups=n * t * c)
    return planes.view(n, t, c, h, w).round_()


COLOUR_KERNELS = (brightness, contrast, saturation, hue)


def _apply_to(rgb: torch.Tensor, chosen: torch.Tensor, fn, *args) -> None:
    """rgb[chosen] = fn(rgb[chosen], *args[chosen]), for the views where `chosen` is true."""
    where = chosen.nonzero().squeeze(1)
    if len(where):
        rgb[where] = fn(rgb[where], *[a[where] if torch.is_tensor(a) else a for a in args])


def colour(rgb: torch.Tensor, raw: dict[str, torch.Tensor], params: DatasetParams) -> torch.Tensor:
    """Colour jitter (each view's own op order and factors, the ops `params` switch on), grayscale
    and blur of (N, T, 3, S, S) whole-number RGB, as drawn."""
    jitter, order, factor = raw["jitter"].flatten(), raw["jitter_order"].flatten(0, 1), raw["jitter_factor"].flatten(0, 1)
    if jitter.any():
        enabled = jitter_ops(params)
        for turn in range(4):
            for op, kernel in enumerate(COLOUR_KERNELS):
                if enabled[op]:
                    _apply_to(rgb, jitter & (order[:, turn] == op), kernel, factor[:, op])
    _apply_to(rgb, raw["grayscale"].flatten(), grayscale)
    sigma = raw["blur_sigma"].flatten()
    _apply_to(rgb, sigma > 0, gaussian_blur, sigma, blur_kernel_size(params.crop_size))
    return rgb


# -- flow --------------------------------------------------------------------------------------------


def whole_frame_flow(flow: torch.Tensor, sizes: torch.Tensor, params: DatasetParams) -> torch.Tensor:
    """(B, V, T, 2, H, W) float flow, padded, with the camera's pan removed and (frame_max_magnitude)
    each frame normalised over each sample's own stored frame (`sizes`: (B, 2) height, width)."""
    whole = params.flow_norm == "frame_max_magnitude"
    if params.flow_camera == "none" and not whole:
        return flow
    groups = torch.unique(sizes.cpu(), dim=0).tolist()
    if groups == [list(flow.shape[-2:])]:  # every sample fills the batch's frames: no gathers
        flow = subtract_camera(flow, params.flow_camera)
        return normalise_flow(flow, params.flow_norm) if whole else flow
    for h, w in groups:
        group = ((sizes[:, 0] == h) & (sizes[:, 1] == w)).nonzero().squeeze(1)
        part = subtract_camera(flow[group][..., :h, :w], params.flow_camera)
        flow[group, ..., :h, :w] = normalise_flow(part, params.flow_norm) if whole else part
    return flow


def rotate(flow: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """(B, V, 2, T, S, S) flow with every vector of sample b turned by FRA_ANGLES[rotation[b]]."""
    shape = (-1, 1, 1, 1, 1)
    c = FRA_COS.to(flow.device)[rotation].view(shape)
    s = FRA_SIN.to(flow.device)[rotation].view(shape)
    u, v = flow.unbind(2)
    return torch.stack([c * u - s * v, s * u + c * v], dim=2)


def augment_batch(raw: dict[str, Any], params: DatasetParams, geo: dict[str, torch.Tensor] | None = None, *,
                  batched: bool | None = None) -> dict[str, Any]:  # fmt: skip
    """A batch from the workers (schemas/batch.py RAW, on any device) -> the training batch (SAMPLE):
    RGB uint8 (B, V, 3, T, S, S), flow and rotated flow float32 (B, V, 2, T, S, S). The crops are
    resized by the batched passes (`batched`; the default off a CPU) or view by view with torch's
    resize (the default on a CPU); both give the same RGB and flow to float32 rounding. `geo`: the
    views' resize weights (`geometry`), when the caller made them ahead (on the device already).

    On a CPU the batch goes through a sample at a time: the same operations, but each one's
    tensors stay in the CPU's caches, where whole-batch ones stream through memory (1.6x faster
    with the demo's augmentation: bench/loader.py, cpu_pass)."""
    if batched is None:
        batched = raw["rgb"].device.type != "cpu"
    if batched or len(raw["rgb"]) == 1:
        return _augment(raw, params, geo, batched)
    parts = [_augment({k: x[i : i + 1] for k, x in raw.items()}, params, None, False) for i in range(len(raw["rgb"]))]
    return {k: torch.cat([p[k] for p in parts]) if torch.is_tensor(x) else [y for p in parts for y in p[k]] for k, x in parts[0].items()}


def _augment(raw: dict[str, Any], params: DatasetParams, geo: dict[str, torch.Tensor] | None, batched: bool) -> dict[str, Any]:
    rgb = raw["rgb"]
    b, v, t, h, w, _ = rgb.shape
    size = params.crop_size
    device = rgb.device
    crop, flip = raw["crop"].flatten(0, 1), raw["flip"].flatten()
    if batched and geo is None:
        geo = {k: x.to(device) for k, x in geometry(crop, flip, size).items()}

    def crops(x: torch.Tensor) -> torch.Tensor:  # (N, T, C, H, W) -> (N, T, C, S, S)
        if not batched:
            return resample_by_view(x, crop, flip, size)
        n, t, c, h, w = x.shape
        x = x.reshape(n, t * c, h, w)
        return (resample_pixels(x, geo) if x.dtype == torch.uint8 else resample(x, geo)).view(n, t, c, size, size)

    frames = crops(rgb.reshape(b * v, t, h, w, 3).permute(0, 1, 4, 2, 3))  # channels-last frames as stored
    if frames.dtype != torch.uint8 or raw["jitter"].any() or raw["grayscale"].any() or raw["blur_sigma"].any():
        frames = colour(frames.float(), raw, params).to(torch.uint8)
    out = {key: raw[key] for key in ("start", "crop", "flip", "video_id", "item", "position", "padding", "angle")}
    out["rgb"] = frames.view(b, v, t, 3, size, size).transpose(2, 3)
    if "flow" in raw:
        flow = raw["flow"].permute(0, 1, 2, 5, 3, 4).to(torch.float32, memory_format=torch.contiguous_format)  # (B, V, T, 2, H, W)
        flow = whole_frame_flow(flow, raw["size"], params)
        flow = crops(flow.view(b * v, t, 2, h, w)).view(b, v, t, 2, size, size)
        crop = raw["crop"].double()
        scale = torch.stack([size / crop[..., 3], size / crop[..., 2]], dim=-1).float()  # u by width, v by height
        flow = flow * scale.view(b, v, 1, 2, 1, 1)
        if params.flow_norm != "frame_max_magnitude":
            flow = normalise_flow(flow, params.flow_norm, params.flow_bound)
        sign = torch.where(raw["flip"], -1.0, 1.0).to(flow.dtype)
        flow[:, :, :, 0] *= sign.view(b, v, 1, 1, 1)
        out["flow"] = flow.transpose(2, 3)
        if "rotation" in raw and params.rotation:
            out["flow_rot"] = rotate(out["flow"], raw["rotation"])
    return out
