"""pipeline/sampling/mds.py against a reference written directly from the paper's formula (numpy and OpenCV,
loops where the formula has them), on random flows; and its edge cases."""

import cv2
import numpy as np
import pytest

from pipeline.sampling.mds import frame_scores


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


def test_the_motion_map_is_opencvs_sobel():
    """One M_i for the flow stats and MDS: torch's shifted slices against OpenCV's Sobel (reflect-101
    borders), an independent implementation."""
    import cv2
    import torch

    from pipeline.flow.stats import flow_stats, motion_map

    flow = np.random.default_rng(5).normal(0, 2, (3, 33, 47, 2)).astype(np.float32)
    ours = motion_map(torch.from_numpy(flow).permute(0, 3, 1, 2).contiguous()).numpy()
    reference = np.stack([np.sqrt(sum(cv2.Sobel(np.ascontiguousarray(frame[..., c]), cv2.CV_32F, dx, 1 - dx, ksize=3) ** 2
                                      for c in range(2) for dx in (1, 0))) for frame in flow])  # fmt: skip
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)
    stats = flow_stats(flow, moving_threshold=1.0)
    np.testing.assert_array_equal(stats["motion_edge_mean"], ours.reshape(3, -1).mean(axis=1))


# -- the authors' convention against a reference written from their release ----------------------
# megvii-research/MSCL, tools/ssl/generate_mcl_samples.py with weight_type "rgb_map" and att_type
# "max" (the paper's MDS), step by step in the release's own libraries and dtypes: float32 flow,
# scipy.ndimage.sobel (borders "reflect"), torch avg_pool2d (floor mode) and bilinear interpolate,
# RAFT's flow_viz colour image as uint8 then float32, the spatial mean of the channel norm of
# W_i - W_{i+1}, clip weights summed over the starts that exist and divided by clip_len, and the
# starts strictly above the median over every start.


def authors_colorwheel() -> np.ndarray:
    """flow_viz.make_colorwheel: each ramp moves one channel by floor(255 * k / count), up or down."""
    ramps = [(15, 1, 0, 1), (6, 0, 1, -1), (4, 2, 1, 1), (11, 1, 2, -1), (13, 0, 2, 1), (6, 2, 0, -1)]  # count, moving, full, sign
    rows = []
    for count, moving, full, sign in ramps:
        for k in range(count):
            row = np.zeros(3)
            row[full] = 255
            step = np.floor(255 * k / count)
            row[moving] = step if sign > 0 else 255 - step
            rows.append(row)
    return np.array(rows)


def authors_colour_image(flow: np.ndarray) -> np.ndarray:
    """RAFT's flow_viz.flow_to_image: flow / (max radius + 1e-5), Middlebury wheel, uint8 (H, W, 3)."""
    wheel = authors_colorwheel()
    u, v = flow[..., 0], flow[..., 1]
    rad_max = np.max(np.sqrt(np.square(u) + np.square(v)))
    u, v = u / (rad_max + 1e-5), v / (rad_max + 1e-5)
    rad = np.sqrt(np.square(u) + np.square(v))
    a = np.arctan2(-v, -u) / np.pi
    fk = (a + 1) / 2 * (len(wheel) - 1)
    k0 = np.floor(fk).astype(np.int32)
    k1 = k0 + 1
    k1[k1 == len(wheel)] = 0
    f = fk - k0
    image = np.zeros((*u.shape, 3), np.uint8)
    for i in range(3):
        col = (1 - f) * wheel[k0, i] / 255.0 + f * wheel[k1, i] / 255.0
        inside = rad <= 1
        col[inside] = 1 - rad[inside] * (1 - col[inside])
        col[~inside] = col[~inside] * 0.75
        image[..., i] = np.floor(255 * col)
    return image


def authors_frame_weights(flow: np.ndarray) -> list[np.ndarray]:
    import torch
    import torch.nn.functional as F
    from scipy import ndimage

    weights = []
    for frame in flow.astype(np.float32):
        u, v = frame[..., 0], frame[..., 1]
        motion = np.sqrt(np.square(ndimage.sobel(u, axis=-1)) + np.square(ndimage.sobel(u, axis=0))
                         + np.square(ndimage.sobel(v, axis=-1)) + np.square(ndimage.sobel(v, axis=0)))  # fmt: skip
        cmp = torch.from_numpy(motion).unsqueeze(0).unsqueeze(0).float()
        size = cmp.shape[-2:]
        cmp = F.interpolate(F.avg_pool2d(cmp, kernel_size=(28, 28), stride=(28, 28)), size=size, mode="bilinear")[0, 0]
        attention = (cmp / cmp.max()).unsqueeze(-1).numpy()
        weights.append(attention * authors_colour_image(frame).astype(np.float32))
    weights.append(weights[-1])
    return [np.linalg.norm(weights[i] - weights[i + 1], axis=-1).mean((0, 1)) for i in range(len(weights) - 1)]


def authors_chosen_starts(frame_weights: list[np.ndarray], clip_len: int = 8, clip_stride: int = 4) -> tuple[list, list[int]]:
    n = len(frame_weights)
    clip_weights = []
    for i in range(n):
        total = 0
        for j in range(clip_len):
            if i + j * clip_stride < n:
                total += frame_weights[i + j * clip_stride]
        clip_weights.append(total / clip_len)
    median = np.median(clip_weights)
    return clip_weights, [i for i, value in enumerate(clip_weights) if value > median]


def moving_layers(frames: int, height: int = 128, width: int = 170, seed: int = 0) -> np.ndarray:
    """Synthetic flow of a few objects whose speed changes over time on a drifting background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    flow = np.zeros((frames, height, width, 2), np.float32)
    objects = [(rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, 40), rng.normal(0, 3, 2), rng.uniform(0.05, 0.3))
               for _ in range(3)]  # fmt: skip
    for t in range(frames):
        flow[t] = rng.normal(0, 0.3, 2) + 0.5 * np.sin(0.1 * t)
        for cx, cy, radius, velocity, wobble in objects:
            x, y = cx + velocity[0] * t, cy + velocity[1] * t
            inside = (xx - x % width) ** 2 + (yy - y % height) ** 2 < radius**2
            flow[t][inside] = velocity * (1 + np.sin(wobble * t)) + rng.normal(0, 0.2, 2)
    return cv2.GaussianBlur(flow.reshape(frames * height, width, 2), (0, 0), 1.0).reshape(frames, height, width, 2)


@pytest.mark.parametrize("frames, seed", [(60, 0), (120, 1), (47, 2)])
def test_authors_convention_reproduces_the_release_scores_and_selection(frames, seed):
    from pipeline.sampling.clips import ClipSpec, Threshold, candidate_starts, clip_scores, select

    flow = moving_layers(frames, seed=seed)
    reference = np.array(authors_frame_weights(flow))
    ours = frame_scores(flow, convention="authors")["mds"]
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-6)
    reference_clips, chosen = authors_chosen_starts(list(reference))
    spec = ClipSpec(8, 4)
    scores = clip_scores(ours, spec)
    np.testing.assert_allclose(scores, reference_clips, rtol=1e-4)
    starts = candidate_starts(frames, spec, "authors")
    assert list(starts) == list(range(frames))  # every start, the cut-short tail ones too
    kept = starts[select(scores, starts, Threshold("median", min_keep=0))]
    assert list(kept) == chosen


def test_the_two_conventions_differ_where_the_release_drops_borders_and_counts_tail_starts():
    from pipeline.sampling.clips import ClipSpec, candidate_starts

    flow = np.zeros((3, 128, 170, 2), np.float32)
    flow[:, 115:, :, 0] = 3.0  # motion only in the bottom 13 rows, below the last whole 28-pixel block
    flow[1, 115:, :] = (0.0, 3.0)  # the middle frame moves down instead: its colour changes
    pipeline_scores = frame_scores(flow, convention="pipeline")
    authors_scores = frame_scores(flow, convention="authors")
    assert pipeline_scores["attention_mean"][0] > 0  # the partial bottom blocks count
    assert authors_scores["attention_mean"][0] == 0  # floor mode dropped them: no attention, no score
    assert authors_scores["mds"][0] == 0 < pipeline_scores["mds"][0]
    assert len(candidate_starts(47, ClipSpec(8, 4), "pipeline")) == 19
    assert len(candidate_starts(47, ClipSpec(8, 4), "authors")) == 47
    with pytest.raises(ValueError, match="smaller than one 28x28"):
        frame_scores(np.ones((2, 20, 40, 2), np.float32), convention="authors")
