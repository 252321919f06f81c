"""Motion Differential Sampling, per frame: how much the motion changes from one flow frame to the next.

The authors' method (MSCL, section 4; ../shared/MSCL.md), for flow frames i of one video:
  1. C_i: the flow colour-coded with the Middlebury colour wheel (each frame normalised by its own
     largest vector, as the released code does), float in [0, 1];
  2. M_i: the motion map, sqrt of the summed squared Sobel x/y derivatives of u and v;
  3. A_i: M_i averaged in 28x28 blocks, bilinearly upsampled back to (H, W), divided by its maximum;
  4. W_i = A_i * C_i;
  5. s_i = spatial mean of ||W_i - W_{i+1}||_2 over channels, the last frame repeating (s_last = 0).
Alternatives for ablations use the same differential on M_i or A_i alone, or the mean flow
magnitude. Everything is vectorised over a video's frames with torch (CPU or GPU).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.utils import flow_to_image

BLOCK = 28  # the authors' attention pooling block, in pixels
FRAME_SCORES = ("mds", "motion_map_diff", "attention_diff", "flow_magnitude")

def colour_wheel(flow: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W) flow -> (N, 3, H, W) float in [0, 1], each frame scaled by its largest vector."""
    norms = flow.square().sum(dim=1).sqrt().amax(dim=(1, 2)).clamp_min(torch.finfo(flow.dtype).eps)
    unit = flow / norms[:, None, None, None]
    # flow_to_image scales by the largest vector of the whole batch, which is now 1 (or 0 for
    # all-zero frames, which it leaves white): the per-frame scaling above is what counts.
    return flow_to_image(unit).float() / 255.0


def motion_map(flow: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W) -> (N, H, W): sqrt of the summed squared Sobel derivatives of u and v.

    The 3x3 Sobel kernels as shifted slices (the kernel is separable), with reflected borders as
    cv2.Sobel's default: several times faster on a CPU than a conv2d with such small kernels."""
    p = F.pad(flow, (1, 1, 1, 1), mode="reflect")
    right, left = p[..., 2:], p[..., :-2]
    horizontal = right - left  # [-1, 0, 1] along x, every row
    dx = horizontal[..., :-2, :] + 2 * horizontal[..., 1:-1, :] + horizontal[..., 2:, :]
    down, up = p[..., 2:, :], p[..., :-2, :]
    vertical = down - up  # [-1, 0, 1] along y, every column
    dy = vertical[..., :-2] + 2 * vertical[..., 1:-1] + vertical[..., 2:]
    return (dx.square() + dy.square()).sum(dim=1).sqrt()


def attention(motion: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """(N, H, W) motion maps -> (N, H, W) attention in [0, 1]: block means, upsampled, over the max.
    Blocks cut by the border average the pixels they have."""
    height, width = motion.shape[1:]
    pooled = F.avg_pool2d(motion[:, None], block, stride=block, ceil_mode=True, count_include_pad=False)
    up = F.interpolate(pooled, size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    return up / up.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)


def _differential(maps: torch.Tensor) -> torch.Tensor:
    """(N, [C,] H, W) -> (N,): mean over pixels of the channel-norm of map_i - map_{i+1}; last is 0."""
    if maps.ndim == 3:
        maps = maps[:, None]
    following = torch.cat([maps[1:], maps[-1:]])  # the last frame repeats
    return (maps - following).square().sum(dim=1).sqrt().mean(dim=(1, 2))


def frame_scores(flow: np.ndarray, *, block: int = BLOCK, noise_floor: float = 0.0, device: str = "cpu") -> dict[str, np.ndarray]:
    """(N, H, W, 2) flow of one video -> {score name: (N,) float32} for every name in FRAME_SCORES,
    plus the means of the motion map and the attention map. Raises ValueError on NaN or inf.

    `noise_floor` (pixels/frame): vectors shorter than this count as no motion. 0 is the authors'
    method exactly; above 0 it keeps their per-frame normalisations from blowing sub-pixel codec
    noise of a static shot up into full-strength colours (a static video then scores 0)."""
    if flow.ndim != 4 or flow.shape[-1] != 2:
        raise ValueError(f"flow must be (N, H, W, 2), got {flow.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32)).permute(0, 3, 1, 2).contiguous().to(device)
    if not torch.isfinite(tensor).all():
        raise ValueError("flow contains NaN or infinite values")
    if noise_floor > 0:
        tensor = tensor * (tensor.square().sum(dim=1, keepdim=True) >= noise_floor**2)
    motion = motion_map(tensor)
    attn = attention(motion, block)
    weighted = attn[:, None] * colour_wheel(tensor)
    out = {
        "mds": _differential(weighted),
        "motion_map_diff": _differential(motion),
        "attention_diff": _differential(attn),
        "flow_magnitude": tensor.square().sum(dim=1).sqrt().mean(dim=(1, 2)),
        "motion_map_mean": motion.mean(dim=(1, 2)),
        "attention_mean": attn.mean(dim=(1, 2)),
    }
    return {name: values.cpu().numpy().astype(np.float32) for name, values in out.items()}
