"""Motion Differential Sampling, per frame: how much the motion changes from one flow frame to the next.

The authors' method (MSCL, section 4; ../shared/MSCL.md), for flow frames i of one video:
  1. C_i: the flow colour-coded with the Middlebury colour wheel, each frame normalised by its own
     largest vector;
  2. M_i: the motion map, sqrt of the summed squared Sobel x/y derivatives of u and v;
  3. A_i: M_i averaged in 28x28 blocks, bilinearly upsampled back to (H, W), divided by its maximum;
  4. W_i = A_i * C_i;
  5. s_i = spatial mean of ||W_i - W_{i+1}||_2 over channels, the last frame repeating (s_last = 0).

Two conventions compute it (`sample.convention`):
- "authors": exactly as the release's `tools/ssl/generate_mcl_samples.py` (megvii-research/MSCL):
  Sobel with `scipy.ndimage.sobel`'s borders (reflect, the edge pixel repeated), 28x28 block means
  in floor mode (partial blocks at the right and bottom borders dropped before upsampling), and
  the colour image of RAFT's `flow_viz.flow_to_image` (flow / (max + 1e-5), values 0-255);
- "pipeline": Sobel with cv2's default borders (reflect-101), block means in ceil mode (partial
  border blocks average the pixels they have, so motion near the right and bottom borders counts),
  colours in [0, 1].
Alternatives for ablations use the same differential on M_i or A_i alone, or the mean flow
magnitude. Everything is vectorised over a video's frames with torch, in float64; the scores are
rounded to `SIGNIFICANT_DIGITS` so that the tables built from them are the same on every machine.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.flow.colour import normalised_colours
from pipeline.flow.stats import motion_map
from pipeline.sampling.clips import round_significant
from schemas.params import MDS_CONVENTIONS

BLOCK = 28  # the authors' attention pooling block, in pixels
FRAME_SCORES = ("mds", "motion_map_diff", "attention_diff", "flow_magnitude")
Convention = Literal["pipeline", "authors"]
SCORING_VERSION = 2  # bump when the scores change for the same flow and params (stored scores are then recomputed)
AUTHORS_EPSILON = 1e-5  # RAFT's flow_viz.flow_to_image: flow / (largest vector + 1e-5)
PIPELINE_EPSILON = float(np.finfo(np.float32).eps)  # torchvision's flow_to_image

def attention(motion: torch.Tensor, block: int = BLOCK, *, partial_blocks: bool = True) -> torch.Tensor:
    """(N, H, W) motion maps -> (N, H, W) attention in [0, 1]: block means, upsampled, over the max.

    `partial_blocks`: blocks cut by the right and bottom borders average the pixels they have (ceil
    mode); off, they are dropped as `avg_pool2d`'s floor mode does (the authors'). A frame with no
    motion at all has attention 0 everywhere."""
    height, width = motion.shape[1:]
    if not partial_blocks and (height < block or width < block):
        raise ValueError(f"flow of {width}x{height} is smaller than one {block}x{block} attention block; "
                         f"lower sample.block or use sample.convention: pipeline")  # fmt: skip
    pooled = F.avg_pool2d(motion[:, None], block, stride=block, ceil_mode=partial_blocks, count_include_pad=False)
    up = F.interpolate(pooled, size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    top = up.amax(dim=(1, 2), keepdim=True)
    return torch.where(top > 0, up / top.clamp_min(torch.finfo(up.dtype).tiny), 0.0)


def _differential(maps: torch.Tensor) -> torch.Tensor:
    """(N, [C,] H, W) -> (N,): mean over pixels of the channel-norm of map_i - map_{i+1}; last is 0."""
    if maps.ndim == 3:
        maps = maps[:, None]
    following = torch.cat([maps[1:], maps[-1:]])  # the last frame repeats
    return (maps - following).square().sum(dim=1).sqrt().mean(dim=(1, 2))


def frame_scores(flow: np.ndarray, *, block: int = BLOCK, noise_floor: float = 0.0, convention: Convention = "pipeline",
                 device: str = "cpu") -> dict[str, np.ndarray]:  # fmt: skip
    """(N, H, W, 2) flow of one video -> {score name: (N,) float32} for every name in FRAME_SCORES,
    plus the means of the motion map and the attention map. Raises ValueError on NaN or inf.

    Computed in float64 and rounded to SIGNIFICANT_DIGITS: the last bits of a float computation
    depend on the CPU, the thread count and the batch shape; the rounded scores do not.
    `noise_floor` (pixels/frame): vectors shorter than this count as no motion. With 0 and
    `convention="authors"` this is the authors' method exactly; above 0 it keeps their per-frame
    normalisations from blowing sub-pixel codec noise of a static shot up into full-strength colours
    (a static video then scores 0)."""
    if flow.ndim != 4 or flow.shape[-1] != 2:
        raise ValueError(f"flow must be (N, H, W, 2), got {flow.shape}")
    if convention not in MDS_CONVENTIONS:
        raise ValueError(f"unknown MDS convention {convention!r}; allowed: {', '.join(MDS_CONVENTIONS)}")
    authors = convention == "authors"
    tensor = torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float64)).permute(0, 3, 1, 2).contiguous().to(device)
    if not torch.isfinite(tensor).all():
        raise ValueError("flow contains NaN or infinite values")
    if noise_floor > 0:
        tensor = tensor * (tensor.square().sum(dim=1, keepdim=True) >= noise_floor**2)
    motion = motion_map(tensor, "replicate" if authors else "reflect")
    attn = attention(motion, block, partial_blocks=not authors)
    colour = normalised_colours(tensor, AUTHORS_EPSILON) if authors else normalised_colours(tensor, PIPELINE_EPSILON) / 255
    out = {
        "mds": _differential(attn[:, None] * colour),
        "motion_map_diff": _differential(motion),
        "attention_diff": _differential(attn),
        "flow_magnitude": tensor.square().sum(dim=1).sqrt().mean(dim=(1, 2)),
        "motion_map_mean": motion.mean(dim=(1, 2)),
        "attention_mean": attn.mean(dim=(1, 2)),
    }
    return {name: round_significant(values.cpu().numpy()).astype(np.float32) for name, values in out.items()}
