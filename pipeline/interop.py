"""The store and the clip index for mmaction2 users: MDS-selected clips as an annotation list, and
optionally as a rawframes tree (`img_00001.jpg`, and `flow_x_00001.jpg`/`flow_y_00001.jpg` quantised
to 8 bits over +-bound as denseflow writes them).

    <out>/classes.txt                 one class per line: line n is label n - 1
    <out>/clips.txt                   or train.txt and test.txt with a split: one selected clip per line,
                                      "<frame_dir> <offset> <total_frames> <label>" (mmaction2's
                                      RawframeDataset with with_offset=True)
    <out>/rawframes/<video_id>/       with --rawframes: every frame of each video with a selected clip

A line's clip is the frames offset + 1 ... offset + total_frames of its folder (mmaction2 reads
file `start_index` + offset + i, `start_index` 1); a sampler taking clip_len frames at the index's
stride from there gets exactly the clip MDS selected. Unlabelled videos get label -1. mmaction2's
flow configs name flow files '{}_{:05d}.jpg'; for these (denseflow's names) set
filename_tmpl='flow_{}_{:05d}.jpg'.

`r3d_18_to_mmaction` renames a trained r3d_18 RGB encoder (torchvision's module names, as the train
stage exports it) to mmaction2's ResNet3d names, for a recogniser whose backbone is
`ResNet3d(depth=18, pretrained=None, conv1_kernel=(3, 7, 7), conv1_stride_t=1, with_pool1=False,
with_pool2=False, spatial_strides=(1, 2, 2, 2), temporal_strides=(1, 2, 2, 2), inflate=(1, 1, 1, 1))`
(the architecture of torchvision's r3d_18: no max pools, 3x3x3 blocks that halve time as well).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline import store as stores
from pipeline.splits import match_videos, read_labels
from pipeline.tables import read_table
from schemas.tables import DECODED

TORCHVISION_TO_MMACTION = (  # (torchvision r3d_18 prefix, mmaction2 ResNet3d prefix): a Conv3d then its BatchNorm3d
    (re.compile(r"^stem\.0\."), "conv1.conv."),
    (re.compile(r"^stem\.1\."), "conv1.bn."),
    (re.compile(r"^(layer\d\.\d\.(?:conv1|conv2|downsample))\.0\.(?:0\.)?"), r"\1.conv."),
    (re.compile(r"^(layer\d\.\d\.(?:conv1|conv2|downsample))\.1\."), r"\1.bn."),
)
FRAME_TEMPLATE = "img_{:05d}.jpg"  # mmaction2's default filename_tmpl, counted from 1
FLOW_TEMPLATE = "flow_{}_{:05d}.jpg"  # denseflow's names: flow_x_00001.jpg, flow_y_00001.jpg


def quantise_flow(flow: np.ndarray, bound: float) -> np.ndarray:
    """Flow in pixels as denseflow's 8-bit images: [-bound, bound] mapped linearly onto 0..255, clipped."""
    scaled = (np.asarray(flow, np.float32) + bound) * (255.0 / (2 * bound))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def dequantise_flow(image: np.ndarray, bound: float) -> np.ndarray:
    """Pixels from denseflow's 8-bit flow images (the inverse of `quantise_flow`, up to its step of 2 bound / 255)."""
    return (np.asarray(image, np.float32) * (2 * bound / 255.0) - bound).astype(np.float32)


def _write_rawframes(store: str | Path, video_id: str, folder: Path, flow_method: str | None, bound: float, quality: int) -> int:
    """All frames (and flows) of a video as JPEG files, written beside and renamed into place."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    frames = stores.open_frames(store, video_id)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    for i in range(len(frames)):
        cv2.imwrite(str(partial / FRAME_TEMPLATE.format(i + 1)), cv2.cvtColor(np.asarray(frames[i]), cv2.COLOR_RGB2BGR), params)
    if flow_method is not None:
        flow = stores.open_flow(store, flow_method, video_id)
        for i in range(len(flow)):
            image = quantise_flow(flow[i], bound)
            cv2.imwrite(str(partial / FLOW_TEMPLATE.format("x", i + 1)), image[..., 0], params)
            cv2.imwrite(str(partial / FLOW_TEMPLATE.format("y", i + 1)), image[..., 1], params)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    return len(frames)


def export_mmaction(sample_dir: str | Path, decode_dir: str | Path, labels_path: str | Path | None, split: int, store: str | Path,
                    out: str | Path, *, rawframes: bool = False, flow_method: str | None = None, bound: float = 20.0,
                    quality: int = 95) -> dict[str, int]:  # fmt: skip
    """Write the annotation lists (and the rawframes tree); returns counts for the summary."""
    out = Path(out)
    clips = read_table(Path(sample_dir) / "clips.parquet").to_pandas()
    decoded = read_table(Path(decode_dir) / "decoded.parquet", DECODED).to_pandas()
    relpath = dict(zip(decoded.video_id, decoded.relpath, strict=True))
    label_of: dict[str, str] = {}
    side_of: dict[str, str | None] = {}
    if labels_path is not None:
        matched = match_videos(read_labels(labels_path, split), list(decoded.relpath))
        by_relpath = {row.relpath: row for row in matched.table.itertuples(index=False)}
        for video_id, path in relpath.items():
            if path in by_relpath:
                label_of[video_id] = by_relpath[path].label
                side_of[video_id] = by_relpath[path].split
    classes = sorted(set(label_of.values()))
    selected = clips[clips.selected & clips.complete].sort_values(["video_id", "start"])
    lines: dict[str, list[str]] = {}
    for row in selected.itertuples(index=False):
        span = (row.clip_len - 1) * row.stride + 1
        label = classes.index(label_of[row.video_id]) if row.video_id in label_of else -1
        side = side_of.get(row.video_id)
        name = "clips" if not any(side_of.values()) else (side or "unsplit")
        lines.setdefault(name, []).append(f"{row.video_id} {row.start} {span} {label}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("".join(f"{name}\n" for name in classes))
    for name, rows in lines.items():
        tmp = out / f".{name}.txt.tmp"
        tmp.write_text("\n".join(rows) + "\n")
        os.replace(tmp, out / f"{name}.txt")
    counts = {"clips": len(selected), "videos": int(selected.video_id.nunique()), "classes": len(classes)}
    if rawframes:
        counts["frames"] = sum(_write_rawframes(store, video_id, out / "rawframes" / video_id, flow_method, bound, quality)
                               for video_id in sorted(selected.video_id.unique()))  # fmt: skip
    return counts



def r3d_18_to_mmaction(state: dict[str, torch.Tensor], prefix: str = "backbone.") -> dict[str, torch.Tensor]:
    """torchvision r3d_18 weights under mmaction2's ResNet3d names (`prefix` as in a recogniser's
    state dict); the classifier (`fc`) is left out: an mmaction2 head is its own. A key that maps
    to nothing is an error, never silently dropped."""
    out = {}
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        for pattern, replacement in TORCHVISION_TO_MMACTION:
            renamed, hits = pattern.subn(replacement, key)
            if hits:
                out[prefix + renamed] = value
                break
        else:
            raise KeyError(f"{key}: not a key of torchvision's r3d_18; is this an r3d_18 encoder (train.encoder: r3d_18)?")
    return out
