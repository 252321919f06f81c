"""`python cli.py show-flow`: frames over their flow in the colour wheel, as a PNG strip or a video,
with one scale for the whole strip so speeds compare across frames."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.flow.colour import flow_to_rgb
from pipeline.io.encode import encode_video


def _label(image: np.ndarray, text: str) -> np.ndarray:
    image = image.copy()
    cv2.putText(image, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
    return image


def write_strip(frames, flow, out: str | Path, *, count: int = 6) -> Path:
    """PNG: `count` evenly spaced frames (top) over their flow (bottom)."""
    pairs = flow.shape[0]
    picks = np.unique(np.linspace(0, pairs - 1, min(count, pairs)).round().astype(int))
    chosen_flow = np.stack([np.asarray(flow[i], np.float32) for i in picks])
    colours = flow_to_rgb(chosen_flow)
    top = np.hstack([_label(np.asarray(frames[i]), f"frame {i}") for i in picks])
    bottom = np.hstack([_label(c, f"flow {i}->{i + 1}") for c, i in zip(colours, picks, strict=True)])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), np.vstack([top, bottom])[..., ::-1]):
        raise OSError(f"could not write {out}")
    return out


def write_video(frames, flow, out: str | Path, *, fps: tuple[int, int]) -> Path:
    """A video with each frame beside its flow."""
    flow_array = np.asarray(flow[:], np.float32)
    colours = flow_to_rgb(flow_array)
    pictures = (np.hstack([np.asarray(frames[i]), colours[i]]) for i in range(len(colours)))
    # Even sizes for H.264.
    pictures = (p[: p.shape[0] // 2 * 2, : p.shape[1] // 2 * 2] for p in pictures)
    return encode_video(pictures, out, fps=fps, codec="h264", quality=18)
