"""Per-frame statistics of a flow field: how much moves, where, and how sharply the motion changes;
and MDS's motion map, the one implementation the flow stats and MDS (pipeline/sampling/mds.py) share."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

STAT_NAMES = ("mean_mag", "p50_mag", "p90_mag", "p99_mag", "max_mag", "moving_frac", "mean_u", "mean_v", "motion_edge_mean")


def motion_map(flow: torch.Tensor, border: Literal["reflect", "replicate"] = "reflect") -> torch.Tensor:
    """(N, 2, H, W) -> (N, H, W): sqrt of the summed squared Sobel derivatives of u and v.

    The 3x3 Sobel kernels as shifted slices (the kernel is separable): several times faster on a CPU
    than a conv2d with such small kernels. `border`: "reflect" is cv2.Sobel's default (reflect-101:
    the edge pixel is the mirror); "replicate" is scipy.ndimage.sobel's "reflect" (half-sample
    symmetric: for a one-pixel border, the edge pixel repeated)."""
    p = F.pad(flow, (1, 1, 1, 1), mode=border)
    right, left = p[..., 2:], p[..., :-2]
    horizontal = right - left  # [-1, 0, 1] along x, every row
    dx = horizontal[..., :-2, :] + 2 * horizontal[..., 1:-1, :] + horizontal[..., 2:, :]
    down, up = p[..., 2:, :], p[..., :-2, :]
    vertical = down - up  # [-1, 0, 1] along y, every column
    dy = vertical[..., :-2] + 2 * vertical[..., 1:-1] + vertical[..., 2:]
    return (dx.square() + dy.square()).sum(dim=1).sqrt()


def flow_stats(flow: np.ndarray, moving_threshold: float) -> dict[str, np.ndarray]:
    """(N, H, W, 2) flow -> {stat name: (N,) float32} for every name in STAT_NAMES."""
    flow = flow.astype(np.float32, copy=False)
    magnitude = np.sqrt((flow**2).sum(axis=-1)).reshape(len(flow), -1)
    p50, p90, p99 = np.percentile(magnitude, [50, 90, 99], axis=1)
    return {
        "mean_mag": magnitude.mean(axis=1),
        "p50_mag": p50,
        "p90_mag": p90,
        "p99_mag": p99,
        "max_mag": magnitude.max(axis=1),
        "moving_frac": (magnitude > moving_threshold).mean(axis=1),
        "mean_u": flow[..., 0].reshape(len(flow), -1).mean(axis=1),
        "mean_v": flow[..., 1].reshape(len(flow), -1).mean(axis=1),
        "motion_edge_mean": motion_map(torch.from_numpy(flow).permute(0, 3, 1, 2)).numpy().reshape(len(flow), -1).mean(axis=1),
    }


def stats_rows(video_id: str, stats: dict) -> list[dict]:
    """A video's per-pair statistics (`flow_stats`, or the lists kept in its array's attributes) as
    rows of schemas.tables.FLOW_STATS."""
    count = len(stats["mean_mag"])
    return [{"video_id": video_id, "frame": i, **{name: float(stats[name][i]) for name in STAT_NAMES}} for i in range(count)]
