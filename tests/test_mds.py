"""pipeline/mds.py against a reference written directly from the paper's formula (numpy and OpenCV,
loops where the formula has them), on random flows; and its edge cases."""

import cv2
import numpy as np
import pytest

from pipeline.mds import frame_scores


def make_colorwheel() -> np.ndarray:
    """Middlebury colour wheel (Baker et al. 2011): 55 hues in six ramps."""
    ramps = [(15, (255, 0, 0), (255, 255, 0)), (6, (255, 255, 0), (0, 255, 0)), (4, (0, 255, 0), (0, 255, 255)),
             (11, (0, 255, 255), (0, 0, 255)), (13, (0, 0, 255), (255, 0, 255)), (6, (255, 0, 255), (255, 0, 0))]  # fmt: skip
    wheel = []
    for count, start, end in ramps:
        for k in range(count):
            wheel.append([s + (e - s) * k / count for s, e in zip(start, end, strict=True)])
    return np.array(wheel)


def colour_code(flow: np.ndarray) -> np.ndarray:
    """One flow frame -> (H, W, 3) in [0, 1], normalised by its largest vector (reference)."""
    wheel = make_colorwheel()
    u, v = flow[..., 0], flow[..., 1]
    radius = np.sqrt(u**2 + v**2)
    scale = radius.max() + np.finfo(np.float32).eps
    u, v, radius = u / scale, v / scale, radius / scale
    angle = np.arctan2(-v, -u) / np.pi
    position = (angle + 1) / 2 * (len(wheel) - 1)
    k0 = np.floor(position).astype(int)
    k1 = (k0 + 1) % len(wheel)
    fraction = position - k0
    image = np.zeros((*flow.shape[:2], 3))
    for channel in range(3):
        col = (1 - fraction) * wheel[k0, channel] / 255 + fraction * wheel[k1, channel] / 255
        col = np.where(radius <= 1, 1 - radius * (1 - col), col * 0.75)
        image[..., channel] = np.floor(255 * col) / 255
    return image


def reference_scores(flow: np.ndarray, block: int = 28) -> np.ndarray:
    n, height, width = flow.shape[:3]
    weighted = []
    for i in range(n):
        c = colour_code(flow[i])
        m = np.zeros((height, width))
        for channel in range(2):
            component = flow[i, ..., channel].astype(np.float64)
            m += cv2.Sobel(component, cv2.CV_64F, 1, 0, ksize=3) ** 2 + cv2.Sobel(component, cv2.CV_64F, 0, 1, ksize=3) ** 2
        m = np.sqrt(m)
        pooled = np.array([[m[y : y + block, x : x + block].mean() for x in range(0, width, block)] for y in range(0, height, block)])
        a = cv2.resize(pooled, (width, height), interpolation=cv2.INTER_LINEAR)
        a = a / max(a.max(), 1e-12)
        weighted.append(a[..., None] * c)
    weighted.append(weighted[-1])  # the last frame repeats
    return np.array([np.sqrt(((weighted[i] - weighted[i + 1]) ** 2).sum(-1)).mean() for i in range(n)])


@pytest.mark.parametrize("shape, seed", [((5, 56, 84), 0), ((4, 64, 85), 1), ((3, 30, 29), 2)])
def test_agrees_with_the_reference_on_random_flows(shape, seed):
    rng = np.random.default_rng(seed)
    # Smooth random fields with sharp motion boundaries, a few pixels per frame.
    flow = cv2.GaussianBlur(rng.normal(0, 3, (*shape, 2)).astype(np.float32).reshape(-1, shape[2], 2), (0, 0), 2).reshape(*shape, 2)
    flow[:, : shape[1] // 2] += rng.normal(0, 2, 2).astype(np.float32)
    ours = frame_scores(flow)["mds"]
    np.testing.assert_allclose(ours, reference_scores(flow), rtol=1e-3, atol=1e-5)


def test_score_variants_and_edge_cases():
    rng = np.random.default_rng(3)
    flow = rng.normal(0, 1, (4, 40, 50, 2)).astype(np.float32)
    scores = frame_scores(flow)
    assert set(scores) == {"mds", "motion_map_diff", "attention_diff", "flow_magnitude", "motion_map_mean", "attention_mean"}
    assert all(values.shape == (4,) and values.dtype == np.float32 for values in scores.values())
    np.testing.assert_allclose(scores["flow_magnitude"], np.linalg.norm(flow, axis=-1).mean(axis=(1, 2)), rtol=1e-5)
    assert scores["mds"][-1] == 0 and scores["motion_map_diff"][-1] == 0  # the last frame repeats
    zeros = frame_scores(np.zeros((3, 20, 20, 2), np.float32))
    assert all(np.all(values == 0) for name, values in zeros.items())
    constant = frame_scores(np.full((3, 20, 20, 2), 2.0, np.float32))  # uniform motion: no edges, no change
    assert np.all(constant["mds"] == 0) and np.allclose(constant["flow_magnitude"], np.sqrt(8))
    bad = flow.copy()
    bad[1, 3, 4, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        frame_scores(bad)
    bad[1, 3, 4, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        frame_scores(bad)


def test_flow_stats_motion_map_is_the_same_map():
    """The flow stage's stats (OpenCV, no torch in flow workers) and MDS (torch) compute one M_i."""
    import torch

    from pipeline.flowstats import flow_stats, motion_map as stats_motion_map
    from pipeline.mds import motion_map

    flow = np.random.default_rng(5).normal(0, 2, (3, 33, 47, 2)).astype(np.float32)
    ours = motion_map(torch.from_numpy(flow).permute(0, 3, 1, 2).contiguous()).numpy()
    np.testing.assert_allclose(ours, np.stack([stats_motion_map(f) for f in flow]), rtol=1e-5, atol=1e-5)
    stats = flow_stats(flow, moving_threshold=1.0)
    np.testing.assert_allclose(stats["motion_edge_mean"], ours.mean(axis=(1, 2)), rtol=1e-5)
    magnitude = np.linalg.norm(flow, axis=-1)
    np.testing.assert_allclose(stats["p90_mag"], np.percentile(magnitude.reshape(3, -1), 90, axis=1), rtol=1e-6)
    np.testing.assert_allclose(stats["moving_frac"], (magnitude > 1.0).mean(axis=(1, 2)))
