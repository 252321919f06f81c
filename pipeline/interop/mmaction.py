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

import contextlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline.data.splits import match_videos, read_labels
from pipeline.storage import durable
from pipeline.storage import store as stores
from pipeline.storage.tables import FileSet, read_table, sweep
from schemas import paths
from schemas.errors import UserError
from schemas.tables import DECODED

TORCHVISION_TO_MMACTION = (  # (torchvision r3d_18 prefix, mmaction2 ResNet3d prefix): a Conv3d then its BatchNorm3d
    (re.compile(r"^stem\.0\."), "conv1.conv."),
    (re.compile(r"^stem\.1\."), "conv1.bn."),
    (re.compile(r"^(layer\d\.\d\.(?:conv1|conv2|downsample))\.0\.(?:0\.)?"), r"\1.conv."),
    (re.compile(r"^(layer\d\.\d\.(?:conv1|conv2|downsample))\.1\."), r"\1.bn."),
)
FRAME_TEMPLATE = "img_{:05d}.jpg"  # mmaction2's default filename_tmpl, counted from 1
FLOW_TEMPLATE = "flow_{}_{:05d}.jpg"  # denseflow's names: flow_x_00001.jpg, flow_y_00001.jpg
EXPORTED_IMAGE = re.compile(r"^(?:img|flow_x|flow_y)_\d{5,}\.jpg$")  # the only files export writes into a video's folder
EXPORT_MARKER = ".mscl-export.json"  # export's record of the lists and rawframes folders it wrote in its --out
EXPORT_LISTS = ("clips.txt", "train.txt", "test.txt", "unsplit.txt", "classes.txt")  # the lists export may write
EXPORT_PARTIAL, EXPORT_OLD = ".partial", ".old"  # a video's folder being written, or renamed aside to be deleted
EXPORT_LEFTOVER = re.compile(r"^\..+\.[0-9a-f]{12}\.(?:partial|old)$")


def quantise_flow(flow: np.ndarray, bound: float) -> np.ndarray:
    """Flow in pixels as denseflow's 8-bit images: [-bound, bound] mapped linearly onto 0..255, clipped."""
    scaled = (np.asarray(flow, np.float32) + bound) * (255.0 / (2 * bound))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def dequantise_flow(image: np.ndarray, bound: float) -> np.ndarray:
    """Pixels from denseflow's 8-bit flow images (the inverse of `quantise_flow`, up to its step of 2 bound / 255)."""
    return (np.asarray(image, np.float32) * (2 * bound / 255.0) - bound).astype(np.float32)


class ExportRefused(UserError, ValueError):
    """export-mmaction will not write there: the message names the path, why, and the fix."""


def _own_folder(out: Path) -> dict:
    """The record export-mmaction keeps of what it wrote in `out` (EXPORT_MARKER); a folder that is
    absent or empty becomes export's, with an empty record written first, so a killed export leaves
    a folder it recognises. A non-empty folder without the record is refused: it is someone else's."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ExportRefused(f"{out}: is a file or a symlink, not a folder; choose a new or empty folder with --out")
    if out.is_dir():
        try:
            record = json.loads((out / EXPORT_MARKER).read_text())
            if isinstance(record, dict) and record.get("written_by") == "export-mmaction":
                return record
        except (OSError, ValueError):
            pass
        if any(out.iterdir()):
            raise ExportRefused(f"{out}: is not empty and export-mmaction did not write it (no {EXPORT_MARKER}); nothing was "
                                "written there: choose a new or empty folder with --out")  # fmt: skip
    record = {"written_by": "export-mmaction", "lists": [], "rawframes": []}
    durable.atomic_write_bytes(out / EXPORT_MARKER, lambda tmp: Path(tmp).write_text(json.dumps(record)))
    return record


def _check_replaceable(folder: Path) -> None:
    """A video's rawframes folder may be replaced only if it is a real folder holding nothing but
    the images export writes; ExportRefused names the first thing it did not write."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise ExportRefused(f"{folder}: is a symlink or a file where export-mmaction writes a video's frames; move it away, or "
                            "export into a new --out")  # fmt: skip
    if folder.is_dir():
        foreign = sorted(p.name for p in folder.iterdir() if p.is_symlink() or not p.is_file() or not EXPORTED_IMAGE.match(p.name))
        if foreign:
            raise ExportRefused(f"{folder / foreign[0]}: export-mmaction did not write it ({len(foreign)} such entries in "
                                f"{folder.name}/), and replacing the folder would delete it: move it away, or export into a "
                                "new --out")  # fmt: skip


def _write_rawframes(store: str | Path, video_id: str, root: Path, flow_method: str | None, bound: float, quality: int) -> int:
    """All frames (and flows) of a video as JPEG files in `root/video_id`, written into a temporary
    folder beside it and renamed into place; an old folder (checked by `_check_replaceable`) is
    renamed aside first and deleted after. A kill leaves the old folder or the new one, whole."""
    partial = root / f".{video_id}.{uuid.uuid4().hex[:12]}{EXPORT_PARTIAL}"
    partial.mkdir(parents=True)
    try:
        frames = stores.open_frames(store, video_id)[:]  # whole: a chunk holds several frames
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
        for i in range(len(frames)):
            cv2.imwrite(str(partial / FRAME_TEMPLATE.format(i + 1)), cv2.cvtColor(frames[i], cv2.COLOR_RGB2BGR), params)
        if flow_method is not None:
            flow = stores.open_flow(store, flow_method, video_id)[:]
            for i in range(len(flow)):
                image = quantise_flow(flow[i], bound)
                cv2.imwrite(str(partial / FLOW_TEMPLATE.format("x", i + 1)), image[..., 0], params)
                cv2.imwrite(str(partial / FLOW_TEMPLATE.format("y", i + 1)), image[..., 1], params)
        durable.fsync_tree(partial)
        folder = root / video_id
        aside = root / f".{video_id}.{uuid.uuid4().hex[:12]}{EXPORT_OLD}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(folder, aside)
        os.rename(partial, folder)
        durable.fsync_dir(root)
        shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return len(frames)


def _sweep_rawframes(root: Path) -> None:
    """Delete what a killed export left in its rawframes folder: its own temporary folders only."""
    if root.is_dir() and not root.is_symlink():
        for path in root.iterdir():
            if EXPORT_LEFTOVER.match(path.name) and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)


def export_mmaction(sample_dir: str | Path, decode_dir: str | Path, labels_path: str | Path | None, split: int, store: str | Path,
                    out: str | Path, *, rawframes: bool = False, flow_method: str | None = None, bound: float = 20.0,
                    quality: int = 95) -> dict[str, int]:  # fmt: skip
    """Write the annotation lists (and the rawframes tree) into `out`, a new or empty folder or one
    export wrote before; returns counts for the summary.

    Additive or refused: a folder it did not write is refused before anything is written; its
    lists, classes and record of what it wrote are replaced as one set (pipeline/storage/durable.py), and
    lists of an earlier export that this one does not write (train.txt beside a new clips.txt) go in
    the same commit; a video's rawframes folder is replaced only if it holds nothing but export's
    images. Rawframes folders of an earlier export that this one does not write are deleted (after
    the new lists are in) when they hold only export's images, else left and counted (`rawframes_left`)."""
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
    split = any(side_of.values())  # train.txt and test.txt, else one clips.txt
    for row in selected.itertuples(index=False):
        span = (row.clip_len - 1) * row.stride + 1
        label = classes.index(label_of[row.video_id]) if row.video_id in label_of else -1
        name = (side_of.get(row.video_id) or "unsplit") if split else "clips"
        lines.setdefault(name, []).append(f"{row.video_id} {row.start} {span} {label}")
    videos = sorted(selected.video_id.unique())
    record = _own_folder(out)
    tree = out / "rawframes"
    if rawframes:
        if tree.is_symlink() or (tree.exists() and not tree.is_dir()):
            raise ExportRefused(f"{tree}: is a symlink or a file; move it away, or export into a new --out")
        for video_id in videos:  # every folder checked before any is written
            _check_replaceable(tree / video_id)
        _sweep_rawframes(tree)
    sweep(out)  # export's own folder: a set a killed export committed is finished, its temporary files deleted
    counts = {"clips": len(selected), "videos": len(videos), "classes": len(classes)}
    if rawframes:
        counts["frames"] = sum(_write_rawframes(store, video_id, tree, flow_method, bound, quality) for video_id in videos)
    written = [f"{name}.txt" for name in sorted(lines)]
    exported = videos if rawframes else []
    earlier = [video_id for video_id in record.get("rawframes", [])  # a record edited by hand reaches no other folder
               if paths.id_problem(video_id) is None and video_id not in set(exported) and (tree / video_id).exists()]
    with FileSet(out) as files:  # the lists, the classes and the record replaced together
        files.stage("classes.txt", lambda tmp: Path(tmp).write_text("".join(f"{name}\n" for name in classes)))
        for name, rows in sorted(lines.items()):
            files.stage(f"{name}.txt", lambda tmp, rows=rows: Path(tmp).write_text("\n".join(rows) + "\n"))
        for stale in record.get("lists", []):
            if stale not in written and stale in EXPORT_LISTS:
                files.remove(stale)
        kept = {**record, "lists": written, "rawframes": sorted(set(exported) | set(earlier))}
        files.stage(EXPORT_MARKER, lambda tmp: Path(tmp).write_text(json.dumps(kept)))
    left = 0
    for video_id in earlier:  # an earlier export's videos the new lists do not name: only what export wrote is deleted
        try:
            _check_replaceable(tree / video_id)
        except ExportRefused:
            left += 1
            continue
        shutil.rmtree(tree / video_id, ignore_errors=True)
    if left:
        counts["rawframes_left"] = left
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
