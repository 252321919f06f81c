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
import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch

from pipeline.data.splits import match_videos, read_labels
from pipeline.flow.stats import flow_stats, stats_rows
from pipeline.io import images, scan
from pipeline.io.decode import output_size
from pipeline.parallel import map_progress
from pipeline.storage import codecs, durable, ownership
from pipeline.storage import store as stores
from pipeline.storage.tables import FileSet, read_table, sweep, write_table
from schemas import paths
from schemas import store as layout
from schemas.errors import MissingInputError, UserError
from schemas.params import DecodeParams, FlowParams
from schemas.tables import DECODED, FAILURES, FLOW_STATS, FLOWED
from stages.common import (
    Summary,
    failure,
    fingerprint,
    frames_fingerprint,
    listed_arrays,
    log_failure,
    protected_folders,
)

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


# -- import: an mmaction2 / denseflow rawframes tree into the store ------------------------------------

IMAGE_FILE = re.compile(r"^(?P<kind>img|flow_x|flow_y|x|y)_(?P<index>\d+)\.(?:jpg|jpeg|png)$", re.IGNORECASE)
# What one source image may cost an import worker, per pixel: its RGB, the two flow planes, the
# float32 flow pair and its resized copy. decode.memory_mb / this is the largest image read.
IMPORT_BYTES_PER_PIXEL = 24


class ImportProblem(ValueError):
    """A video folder that cannot be imported: (reason of schemas.tables.FAILURE_REASONS, detail)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class RawframeTree:
    folders: dict[str, tuple[str, ...]]  # a video's folder (relative POSIX path) -> its image files' names
    skipped: list[tuple[str, str]]  # (relpath, why): symlinks not followed, folders not entered, loose images


def find_rawframe_folders(root: str | Path, *, follow_symlinks: bool = True) -> RawframeTree:
    """Every folder under `root` holding img_* files (a video's frames), with the image files found
    in it. Symlinks are followed or not as the probe does (`follow_symlinks`); what is not is listed."""
    root = Path(root)
    if not root.is_dir():
        raise MissingInputError(f"{root}: is not a folder of rawframes")
    files, skipped = scan.walk_files(root, lambda name: IMAGE_FILE.match(name) is not None, follow_symlinks=follow_symlinks)
    by_folder: dict[str, list[str]] = {}
    for found in files:
        folder, _, name = found.relpath.rpartition("/")
        by_folder.setdefault(folder, []).append(name)
    folders = {}
    for folder, names in by_folder.items():
        if not any(IMAGE_FILE.match(name)["kind"].lower() == "img" for name in names):  # type: ignore[index]
            continue
        if folder:
            folders[folder] = tuple(names)
        else:
            skipped.append((".", f"{len(names)} images directly in the root, not in a video's folder: not imported"))
    return RawframeTree(folders, skipped)


def _numbered(names: tuple[str, ...]) -> dict[str, dict[int, str]]:
    """{kind: {index: name}} of a folder's frame and flow images; flow_x/x and flow_y/y alike."""
    files: dict[str, dict[int, str]] = {"img": {}, "x": {}, "y": {}}
    for name in names:
        if match := IMAGE_FILE.match(name):
            files[match["kind"].lower().removeprefix("flow_")][int(match["index"])] = name
    return files


def _contiguous(files: dict[int, str], what: str) -> list[str]:
    """The files in order, numbered without a gap from 0 or 1 (denseflow counts from either)."""
    indices = sorted(files)
    first = indices[0]
    if first not in (0, 1) or indices[-1] - first + 1 != len(indices):
        gaps = sorted(set(range(first, indices[-1] + 1)) - set(indices))[:3]
        raise ImportProblem("bad_frames" if what == "frames" else "bad_flow",
                            f"{what} numbered {first}-{indices[-1]} with gaps (missing {gaps}) or not from 0 or 1")  # fmt: skip
    return [files[i] for i in indices]


def list_rawframes(folder: Path, names: tuple[str, ...], bound: float | None,
                   max_pixels: int) -> tuple[list[Path], list[tuple[Path, Path]] | None, str]:  # fmt: skip
    """A folder's frame files in order, its flow files as (x, y) pairs (None without flow files or
    without `bound`), and a sha256 of all their bytes (the import's fingerprint, read a block at a
    time): everything that can be checked without opening an image. A file larger than an image of
    `max_pixels` could be (4 bytes a pixel, and a MiB) is refused before it is read."""
    files = _numbered(names)
    if not files["img"]:
        raise ImportProblem("bad_frames", "no img_*.jpg frames")
    frames = [folder / name for name in _contiguous(files["img"], "frames")]
    if len(frames) < 2:
        raise ImportProblem("too_few_frames", "fewer than 2 frames")
    pairs = None
    if (files["x"] or files["y"]) and bound is not None:
        if len(files["x"]) != len(files["y"]):
            raise ImportProblem("bad_flow", f"{len(files['x'])} flow_x images but {len(files['y'])} flow_y images")
        pairs = [(folder / x, folder / y) for x, y in zip(_contiguous(files["x"], "flow_x"), _contiguous(files["y"], "flow_y"), strict=True)]
        if len(pairs) != len(frames) - 1:
            raise ImportProblem("bad_flow", f"{len(pairs)} flow images for {len(frames)} frames; expected one per pair ({len(frames) - 1})")
    digest, largest = hashlib.sha256(), 4 * max_pixels + 2**20
    for path in frames + [path for pair in pairs or [] for path in pair]:
        try:
            if (size := path.stat().st_size) > largest:
                raise ImportProblem("too_large", f"{scan.shown(path.name)}: a file of {size / 2**20:,.0f} MiB, more than an image "
                                                 f"this import reads may take ({largest / 2**20:,.0f} MiB; decode.memory_mb sets it)")  # fmt: skip
            with open(path, "rb") as handle:
                hashlib.file_digest(handle, lambda: digest)
        except OSError as exc:
            raise ImportProblem("unreadable", f"{scan.shown(path.name)}: cannot be read ({exc.strerror or exc})") from None
    return frames, pairs, digest.hexdigest()


def check_headers(frame_paths: list[Path], pairs: list[tuple[Path, Path]] | None, max_pixels: int) -> tuple[int, int]:
    """(width, height) of the frames, from the images' headers alone: every frame the same size, every
    flow image the frames' size, none larger than `max_pixels` (ImportProblem otherwise)."""
    first = _header(frame_paths[0], False, max_pixels)
    size = (first.width, first.height)
    for path in frame_paths[1:]:
        found = _header(path, False, max_pixels)
        if (found.width, found.height) != size:
            raise ImportProblem("bad_frames", f"frames differ in size: {path.name} is {found.width}x{found.height}, "
                                              f"{frame_paths[0].name} {size[0]}x{size[1]}")  # fmt: skip
    for x_path, y_path in pairs or []:
        for path in (x_path, y_path):
            found = _header(path, True, max_pixels)
            if (found.width, found.height) != size:
                raise ImportProblem("bad_flow", f"flow images are {found.width}x{found.height}, frames {size[0]}x{size[1]} "
                                                f"({path.name}): not the same video's")  # fmt: skip
    return size


def _header(path: Path, flow: bool, max_pixels: int) -> images.Header:
    try:
        return images.header(path, max_pixels)
    except images.ImageError as exc:
        raise _image_problem(exc, flow) from None


def _read_image(path: Path, grey: bool, max_pixels: int) -> np.ndarray:
    try:
        return images.read_image(path, grey=grey, max_pixels=max_pixels)
    except images.ImageError as exc:
        raise _image_problem(exc, grey) from None


def _image_problem(exc: images.ImageError, flow: bool) -> ImportProblem:
    """The video's failure for one of its images: too large (and what to set), or bad frames or flow."""
    if exc.too_large:
        return ImportProblem("too_large", f"{exc}: decode.memory_mb sets that limit ({IMPORT_BYTES_PER_PIXEL} bytes a pixel)")
    return ImportProblem("bad_flow" if flow else "bad_frames", str(exc))


@dataclass(frozen=True)
class ImportTask:
    relpath: str  # the video's folder under the rawframes root
    files: tuple[str, ...]  # its image files, as the walk found them (symlinks only where followed)
    root: str
    store: str
    decode: DecodeParams
    flow: FlowParams
    bound: float | None  # px of the flow images' 8 bits (None: import frames only)
    fps: float
    verify: bool = False  # read every chunk of the existing arrays before skipping them

    @property
    def max_pixels(self) -> int:
        return self.decode.memory_mb * 2**20 // IMPORT_BYTES_PER_PIXEL


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An image at the stored (width, height), as decode stores frames (area averaging)."""
    return image if image.shape[1::-1] == size else cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _frame_blocks(task: ImportTask, frame_paths: list[Path], size: tuple[int, int]) -> Iterator[np.ndarray]:
    """The frames at the stored size, a shard's worth at a time: one source image in memory at once."""
    step = task.decode.shard_frames
    for start in range(0, len(frame_paths), step):
        yield np.stack([_resize(_read_image(path, False, task.max_pixels), size) for path in frame_paths[start : start + step]])


def _flow_blocks(task: ImportTask, pairs: list[tuple[Path, Path]], source: tuple[int, int], size: tuple[int, int]):
    """(first pair, flow in px at the stored size, vectors scaled with it) a shard's worth at a time."""
    scale = np.array([size[0] / source[0], size[1] / source[1]], np.float32)
    step = task.flow.shard_frames
    for start in range(0, len(pairs), step):
        block = []
        for x_path, y_path in pairs[start : start + step]:
            pair = np.stack([_read_image(x_path, True, task.max_pixels), _read_image(y_path, True, task.max_pixels)], axis=-1)
            flow = dequantise_flow(pair, task.bound)  # type: ignore[arg-type]
            block.append(flow if size == source else cv2.resize(flow, size, interpolation=cv2.INTER_AREA) * scale)
        yield start, np.stack(block)


def import_task(task: ImportTask) -> dict:
    """One folder into the store (frames, and flow when there is some), or its failure (reason,
    detail). Images are opened only when an array is missing, damaged or has another fingerprint."""
    video_id, relpath = scan.video_id(task.relpath), scan.shown(task.relpath)
    d, f = task.decode, task.flow
    group = layout.flow_group(f.method)
    fps = Fraction(task.fps).limit_denominator(1001)
    try:
        if relpath != task.relpath:
            raise ImportProblem("bad_name", "the folder's name is not valid UTF-8, which tables and lists cannot hold: "
                                            "rename it (convmv does it for a whole tree) and import again")  # fmt: skip
        frame_paths, pairs, digest = list_rawframes(Path(task.root) / task.relpath, task.files, task.bound, task.max_pixels)
        frames_key = frames_fingerprint(digest, d, layout.STORE_VERSION)
        flow_key = None
        if pairs is not None:
            flow_key = fingerprint(frames_key, "imported", task.bound, f.precision, f.chunk_frames, f.shard_frames,
                                   f.moving_threshold, layout.STORE_VERSION)  # fmt: skip
        frames_meta = _sound_meta(task, layout.FRAMES_GROUP, video_id, frames_key)
        flow_meta = _sound_meta(task, group, video_id, flow_key) if flow_key else {}
        written = frames_meta is None or flow_meta is None
        if written:
            source = check_headers(frame_paths, pairs, task.max_pixels)
            shape, stats = _write_video(task, video_id, frame_paths, pairs, source, digest, frames_key, flow_key)
        else:  # both arrays as this import would write them: their metadata says all the tables need
            shape, source = frames_meta["shape"], tuple(frames_meta["attributes"]["source_size"])  # type: ignore[index]
            stats = flow_meta.get("attributes", {}).get("stats")  # type: ignore[union-attr]
    except ImportProblem as exc:
        return {"video_id": video_id, "relpath": relpath, "reason": exc.reason, "detail": str(exc)}
    decoded = {"video_id": video_id, "relpath": task.relpath, "array": f"{layout.FRAMES_GROUP}/{video_id}", "num_frames": shape[0],
               "height": shape[1], "width": shape[2], "fps_num": fps.numerator, "fps_den": fps.denominator, "source_frame_step": 1.0,
               "scale": shape[2] / source[0]}  # fmt: skip
    if flow_key is None:
        return {"video_id": video_id, "decoded": decoded, "written": written}
    flowed = {"video_id": video_id, "relpath": task.relpath, "array": f"{group}/{video_id}", "method": f.method,
              "num_pairs": shape[0] - 1, "fingerprint": flow_key}  # fmt: skip
    return {"video_id": video_id, "decoded": decoded, "flowed": flowed, "stats": stats_rows(video_id, stats), "written": written}


def _sound_meta(task: ImportTask, group: str, video_id: str, key: str | None) -> dict | None:
    """The metadata of the finished array `group/video_id` if it has fingerprint `key` and is not
    damaged (its shards and their indexes; with `verify`, every chunk), else None: write it again."""
    meta = stores.array_meta(task.store, group, video_id)
    if meta is None or meta.get("attributes", {}).get("fingerprint") != key:
        return None
    return None if stores.damage(task.store, group, video_id, verify=task.verify) else meta


def _write_video(task: ImportTask, video_id: str, frame_paths: list[Path], pairs: list[tuple[Path, Path]] | None,
                 source: tuple[int, int], digest: str, frames_key: str, flow_key: str | None) -> tuple[tuple[int, ...], dict | None]:  # fmt: skip
    """Write the frames (and the flow) at decode.short_side, a shard at a time; (frames shape, flow stats)."""
    d = task.decode
    width, height = output_size(*source, d.short_side)
    fps = Fraction(task.fps).limit_denominator(1001)
    attrs = {"video_id": video_id, "relpath": task.relpath, "sha256": digest, "fps": [fps.numerator, fps.denominator],
             "source_fps": [fps.numerator, fps.denominator], "source_frame_step": 1.0, "source_size": list(source),
             "decoded_size": list(source), "scale": width / source[0], "params": {**d.recorded(), "imported": True},
             "ffmpeg": "", "axes": list(layout.FRAMES_AXES), "fingerprint": frames_key, "store_version": layout.STORE_VERSION}  # fmt: skip
    count = stores.write_frames(task.store, video_id, _frame_blocks(task, frame_paths, (width, height)), height=height, width=width,
                                chunk_frames=d.chunk_frames, shard_frames=d.shard_frames, attrs=attrs, codec=d.codec,
                                quality=d.quality)  # fmt: skip
    stats = None
    if pairs is not None:
        stats = _write_imported_flow(task, video_id, _flow_blocks(task, pairs, source, (width, height)), (len(pairs), height, width, 2),
                                     frames_key, flow_key)  # type: ignore[arg-type]
    return (count, height, width, 3), stats


def _write_imported_flow(task: ImportTask, video_id: str, blocks, shape: tuple[int, ...], frames_key: str, key: str) -> dict:
    """Write the flow blocks as the flow stage writes an array (shard by shard, published whole); its stats."""
    f, group, step = task.flow, layout.flow_group(task.flow.method), 2 * task.bound / 255  # type: ignore[operator]
    height, width = shape[1:3]
    dtype = layout.FLOW_DTYPE if f.precision is None else layout.FLOW_FIXED_DTYPE
    partial = stores.create_partial(task.store, group, video_id, shape=shape, dtype=dtype,
                                    chunks=(f.chunk_frames, height, width, 2), shards=(f.shard_frames, height, width, 2),
                                    axes=layout.FLOW_AXES, codec_chain=codecs.flow_codecs(f.precision))  # fmt: skip
    stats: dict[str, list[float]] = {}
    try:
        array = stores.open_partial(partial)
        for start, flow in blocks:
            array[start : start + len(flow)] = codecs.stored_flow(flow, f.precision)
            for name, values in flow_stats(flow, f.moving_threshold).items():
                stats.setdefault(name, []).extend(values.tolist())
        stores.publish(task.store, group, video_id, partial, {
            "video_id": video_id, "method": f.method, "frames_fingerprint": frames_key, "fingerprint": key,
            "estimator": {"name": "imported", "from": "8-bit flow images (denseflow, mmaction2)", "bound_px": task.bound,
                          "quantisation_step_px": step},
            "imported": True, "quantisation_step_px": step, "axes": list(layout.FLOW_AXES), "store_version": layout.STORE_VERSION,
            "stats": stats, **(layout.fixed_point_attrs(f.precision) if f.precision is not None else {}),
        })  # fmt: skip
    finally:
        stores.discard_partial(partial)
    return stats


def import_rawframes(root: str | Path, store: str | Path, decode_out: str | Path, flow_out: str | Path, decode: DecodeParams,
                     flow: FlowParams, *, bound: float | None, fps: float, follow_symlinks: bool = True, verify: bool = False,
                     scheduler: str | None = None, workers: int | None = None) -> Summary:  # fmt: skip
    """Every video folder of an mmaction2/denseflow rawframes tree into the store, with the decode
    stage's tables (and, with flow images and a `bound`, the flow stage's), so `sample`, `train`
    and `evaluate` run on it unchanged. A folder that cannot be imported goes to failures.parquet
    with its reason; the rest go through. A re-run skips arrays whose fingerprint is unchanged and
    that are not damaged. The store must be this pipeline's, or a new folder (pipeline/storage/ownership.py)."""
    listed = listed_arrays(Path(decode_out) / "decoded.parquet", Path(flow_out) / "videos.parquet")
    with ownership.owning(store, "import-rawframes", protected=protected_folders(root), listed=listed) as owner:
        summary = Summary("import")
        for folder in (decode_out, flow_out) if bound is not None else (decode_out,):
            sweep(folder)  # what a killed run left: its tables' temporary files, a committed set to finish
        tree = find_rawframe_folders(root, follow_symlinks=follow_symlinks)
        wanted = {scan.video_id(relpath) for relpath in tree.folders}  # as the decode stage: the store holds what the tree holds
        groups = [layout.FRAMES_GROUP] + ([layout.flow_group(flow.method)] if bound is not None else [])
        if stale := sum(owner.prepare_group(group, wanted) for group in groups):
            summary.add("stale arrays removed", stale)
        tasks = [ImportTask(relpath, names, str(root), str(owner.store), decode, flow, bound, fps, verify)
                 for relpath, names in sorted(tree.folders.items())]  # fmt: skip
        results = sorted(map_progress(import_task, tasks, scheduler=scheduler, workers=workers, desc="import", unit="video"),
                         key=lambda r: r["video_id"])  # fmt: skip
        failures = [failure("import", r["video_id"], r["relpath"], r["reason"], r["detail"]) for r in results if "reason" in r]
        for row in failures:
            log_failure(row)
            for group in groups:  # an array left from before, or written before a later image failed, is not this tree's
                stores.remove_array(owner.store, group, row["video_id"])
        decoded = [r["decoded"] for r in results if "decoded" in r]
        flowed = [r["flowed"] for r in results if "flowed" in r]
        metadata = {"params": decode.model_dump(mode="json"), "store": Path(store).name, "imported_from": str(root)}
        with FileSet(decode_out) as files:  # each folder's tables replaced together, or none
            write_table(Path(decode_out) / "decoded.parquet", decoded, DECODED, metadata=metadata, files=files)
            write_table(Path(decode_out) / "failures.parquet", failures, FAILURES, metadata=metadata, files=files)
        if bound is not None:
            flow_meta = {"method": flow.method, "params": {"imported": True, "bound": bound}, "moving_threshold": flow.moving_threshold}
            stats = [row for r in results for row in r.get("stats", [])]
            with FileSet(flow_out) as files:
                write_table(Path(flow_out) / "videos.parquet", flowed, FLOWED, metadata=flow_meta, files=files)
                write_table(Path(flow_out) / "stats.parquet", stats, FLOW_STATS, metadata=flow_meta, files=files)
                write_table(Path(flow_out) / "failures.parquet", [], FAILURES, metadata=flow_meta, files=files)
        summary.add("videos", len(decoded))
        summary.add("unchanged", sum(1 for r in results if r.get("written") is False))
        summary.add("with flow", len(flowed))
        if failures:
            summary.add("failed", len(failures))
            for row in failures[:5]:
                summary.notes.append(f"{row['relpath']}: {row['reason']}: {row['detail']}")
        summary.notes += [f"skipped {relpath}: {why}" for relpath, why in tree.skipped] + owner.notes
        return summary
