"""Small figures for the report page: histograms, score curves and loss curves as inline SVG (text kept
as text, a few KB each), and frame-over-flow strips as WebP or JPEG bytes."""

from __future__ import annotations

import io
from typing import Mapping, Sequence

import cv2
import numpy as np

from pipeline.flow.colour import flow_to_rgb

WIDTH_IN, HEIGHT_IN = 4.2, 2.2  # one figure: a third of the page's width at 96 dpi


def _svg(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # inline: no XML declaration or doctype


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 8, "axes.spines.top": False, "axes.spines.right": False})
    return plt.subplots(figsize=(WIDTH_IN, HEIGHT_IN))


def histogram(values: Sequence[float], *, xlabel: str, bins: int = 30, log: bool = False) -> str:
    """A histogram of `values` (an empty one says so) as SVG."""
    figure, axes = _figure()
    values = np.asarray([v for v in values if np.isfinite(v)], np.float64)
    if len(values):
        axes.hist(values, bins=bins, color="#4c72b0", log=log)
    else:
        axes.text(0.5, 0.5, "no values", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("count")
    return _svg(figure)


def bars(labels: Sequence[str], counts: Sequence[int], *, xlabel: str) -> str:
    """Horizontal bars of counts by label (resolutions, statuses) as SVG."""
    figure, axes = _figure()
    positions = np.arange(len(labels))
    axes.barh(positions, counts, color="#4c72b0")
    axes.set_yticks(positions, labels)
    axes.invert_yaxis()
    axes.set_xlabel(xlabel)
    return _svg(figure)


def score_curve(scores: Sequence[float], selected: Sequence[tuple[int, int]], *, title: str) -> str:
    """A video's per-frame MDS scores, the frames its selected clips cover shaded and each one's first
    frame ticked, as SVG."""
    figure, axes = _figure()
    for first, last in _union(selected):  # overlapping clips shaded once
        axes.axvspan(first, last, color="#55a868", alpha=0.25, lw=0)
    axes.plot(np.arange(len(scores)), scores, color="#4c72b0", lw=1)
    if selected:  # each selected clip's first frame
        axes.plot([first for first, _ in selected], np.zeros(len(selected)), "|", color="#2d6a3e", ms=8)
    axes.set_title(title, fontsize=8)
    axes.set_xlabel("flow frame")
    axes.set_ylabel("MDS score")
    return _svg(figure)


def _union(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for first, last in sorted(spans):
        if merged and first <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def loss_curves(steps: Sequence[int], losses: Mapping[str, Sequence[float]], chance: Mapping[str, float], *, title: str) -> str:
    """Each loss over the steps, with its chance value dashed in the same colour, as SVG."""
    figure, axes = _figure()
    for index, (name, values) in enumerate(losses.items()):
        colour = f"C{index}"
        axes.plot(steps, values, color=colour, lw=1, label=name)
        if name in chance:
            axes.axhline(chance[name], color=colour, lw=0.8, ls="--")
    axes.set_title(title, fontsize=8)
    axes.set_xlabel("step")
    axes.set_ylabel("loss (dashed: chance)")
    axes.legend(fontsize=6, ncol=3, frameon=False)
    return _svg(figure)


def strip(frames: np.ndarray, flow: np.ndarray, *, height: int = 72, image_format: str = "webp", quality: int = 80) -> bytes:
    """Frames (N, H, W, 3) over the colour-coded flow (N, H, W, 2) leaving each, one scale for the
    strip, scaled to `height` px a row; encoded as WebP or JPEG."""
    colours = flow_to_rgb(np.asarray(flow, np.float32))
    width = max(1, round(frames.shape[2] * height / frames.shape[1]))
    row = lambda images: np.hstack([cv2.resize(np.ascontiguousarray(i), (width, height), interpolation=cv2.INTER_AREA) for i in images])  # noqa: E731
    picture = np.vstack([row(frames), row(colours)])[..., ::-1]  # BGR for OpenCV
    flag = [cv2.IMWRITE_WEBP_QUALITY, quality] if image_format == "webp" else [cv2.IMWRITE_JPEG_QUALITY, quality]
    ok, encoded = cv2.imencode(".webp" if image_format == "webp" else ".jpg", picture, flag)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image_format} image")
    return encoded.tobytes()
