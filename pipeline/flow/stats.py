"""Per-frame statistics of a flow field: how much moves, where, and how sharply the motion changes."""

from __future__ import annotations

import cv2
import numpy as np

STAT_NAMES = ("mean_mag", "p50_mag", "p90_mag", "p99_mag", "max_mag", "moving_frac", "mean_u", "mean_v", "motion_edge_mean")


def motion_map(flow: np.ndarray) -> np.ndarray:
    """MDS's motion map M: sqrt of the summed squared Sobel x/y derivatives of u and v. (H, W, 2) -> (H, W)."""
    total = np.zeros(flow.shape[:2], np.float32)
    for channel in range(2):
        component = np.ascontiguousarray(flow[..., channel], dtype=np.float32)
        total += cv2.Sobel(component, cv2.CV_32F, 1, 0, ksize=3) ** 2
        total += cv2.Sobel(component, cv2.CV_32F, 0, 1, ksize=3) ** 2
    return np.sqrt(total)


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
        "motion_edge_mean": np.array([motion_map(f).mean() for f in flow]),
    }


def stats_rows(video_id: str, stats: dict) -> list[dict]:
    """A video's per-pair statistics (`flow_stats`, or the lists kept in its array's attributes) as
    rows of schemas.tables.FLOW_STATS."""
    count = len(stats["mean_mag"])
    return [{"video_id": video_id, "frame": i, **{name: float(stats[name][i]) for name in STAT_NAMES}} for i in range(count)]
