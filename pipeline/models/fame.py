"""Foreground-background merging (FAME; Ding et al., CVPR 2022, arXiv 2109.15130), with the mask
taken from the flow the pipeline stores instead of FAME's frame differences.

Two clips of one video share their background, so an RGB-RGB contrastive loss can match them by the
scene alone and never look at what moves (background bias). FAME pastes each query clip's moving
foreground onto the background of another clip of the batch: the positive pair then shares only
the foreground. The foreground is the `share` of pixels that move most over the clip: the flow's
speed, after each frame's median vector (the camera's pan) is removed, averaged over time, blurred
over about a tenth of the crop (as FAME blurs its difference map) and thresholded at its top
`share` (FAME's beta, 0.5 by default there and here).

    mask = foreground_mask(batch["flow"][:, 0], share=0.5)            # (B, 1, 1, H, W) of 0 and 1
    batch["rgb"][:, 0] = merge(batch["rgb"][:, 0], mask, order)       # order: a permutation of the batch
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def foreground_mask(flow: torch.Tensor, share: float = 0.5) -> torch.Tensor:
    """(B, 2, T, H, W) flow -> (B, 1, 1, H, W) float mask, 1 on the `share` of pixels of each clip
    that move most relative to its frame's median motion."""
    if not 0 < share < 1:
        raise ValueError(f"the foreground's share of the frame must be in (0, 1), got {share}")
    batch, _, _, height, width = flow.shape
    flow = flow.float()
    moving = flow - flow.flatten(3).median(dim=3).values[..., None, None]
    speed = moving.norm(dim=1).mean(dim=1, keepdim=True)  # (B, 1, H, W)
    kernel = max(3, int(0.1 * min(height, width)) // 2 * 2 + 1)  # odd, about a tenth of the crop
    sigma = kernel / 3
    taps = torch.exp(-((torch.arange(kernel, dtype=speed.dtype) - kernel // 2) ** 2) / (2 * sigma**2))
    taps = (taps / taps.sum()).to(speed.device)
    speed = F.conv2d(F.pad(speed, (kernel // 2,) * 4, mode="replicate"), taps.view(1, 1, 1, -1))
    speed = F.conv2d(speed, taps.view(1, 1, -1, 1))
    count = max(1, round(share * height * width))
    top = speed.flatten(1).topk(count, dim=1).indices
    mask = torch.zeros(batch, height * width, device=flow.device).scatter_(1, top, 1.0)
    return mask.view(batch, 1, 1, height, width)


def merge(rgb: torch.Tensor, mask: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Each clip's foreground (mask 1) over the background of clip `order[i]` of the same batch:
    rgb (B, 3, T, H, W) and mask (B, 1, 1, H, W), in the dtype of `rgb`."""
    if len(order) != len(rgb):
        raise ValueError(f"order has {len(order)} entries for a batch of {len(rgb)}")
    mask = mask.to(rgb.dtype)
    return rgb * mask + rgb[order] * (1 - mask)


def background_order(batch: int, generator: torch.Generator) -> torch.Tensor:
    """For each clip, another clip of the batch to take the background from: the clips in a random
    order, each taking the next one's (a random cycle, so no clip keeps its own background)."""
    if batch < 2:
        return torch.arange(batch)
    cycle = torch.randperm(batch, generator=generator)
    order = torch.empty(batch, dtype=torch.long)
    order[cycle] = cycle.roll(-1)
    return order
