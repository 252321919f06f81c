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

from dataclasses import dataclass
from fractions import Fraction

import cv2
import numpy as np
import torch

from pipeline import codecs, locks, scan
from pipeline import store as stores
from pipeline.decode import output_size
from pipeline.flowstats import flow_stats, stats_rows
from pipeline.parallel import map_progress
from pipeline.splits import match_videos, read_labels
from pipeline.tables import FileSet, read_table, sweep, write_table
from schemas import store as layout
from schemas.params import DecodeParams, FlowParams
from schemas.tables import DECODED, FAILURES, FLOW_STATS, FLOWED
from stages.common import Summary, fingerprint, frames_fingerprint

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
    split = any(side_of.values())  # train.txt and test.txt, else one clips.txt
    for row in selected.itertuples(index=False):
        span = (row.clip_len - 1) * row.stride + 1
        label = classes.index(label_of[row.video_id]) if row.video_id in label_of else -1
        name = (side_of.get(row.video_id) or "unsplit") if split else "clips"
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


# -- import: an mmaction2 / denseflow rawframes tree into the store ------------------------------------

IMAGE_FILE = re.compile(r"^(?P<kind>img|flow_x|flow_y|x|y)_(?P<index>\d+)\.(?:jpg|jpeg|png)$", re.IGNORECASE)


class ImportProblem(ValueError):
    """A video folder that cannot be imported: (reason of schemas.tables.FAILURE_REASONS, detail)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def find_rawframe_folders(root: str | Path) -> list[str]:
    """Relative POSIX paths of every folder under `root` holding img_*.jpg files (a video's frames)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: is not a folder of rawframes")
    found = set()
    for path in root.rglob("*"):
        if path.is_file() and (match := IMAGE_FILE.match(path.name)) and match["kind"].lower() == "img":
            found.add(path.parent.relative_to(root).as_posix())
    return sorted(found)


def _numbered(folder: Path) -> dict[str, dict[int, Path]]:
    """{kind: {index: path}} of a folder's frame and flow images; flow_x/x and flow_y/y alike."""
    files: dict[str, dict[int, Path]] = {"img": {}, "x": {}, "y": {}}
    for path in folder.iterdir():
        if match := IMAGE_FILE.match(path.name):
            files[match["kind"].lower().removeprefix("flow_")][int(match["index"])] = path
    return files


def _contiguous(files: dict[int, Path], what: str) -> list[Path]:
    """The files in order, numbered without a gap from 0 or 1 (denseflow counts from either)."""
    indices = sorted(files)
    first = indices[0]
    if first not in (0, 1) or indices[-1] - first + 1 != len(indices):
        gaps = sorted(set(range(first, indices[-1] + 1)) - set(indices))[:3]
        raise ImportProblem("bad_frames" if what == "frames" else "bad_flow",
                            f"{what} numbered {first}-{indices[-1]} with gaps (missing {gaps}) or not from 0 or 1")  # fmt: skip
    return [files[i] for i in indices]


def _read_image(path: Path, grey: bool) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR)
    if image is None:
        raise ImportProblem("bad_frames" if not grey else "bad_flow", f"{path.name} does not decode as an image")
    return image if grey else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def list_rawframes(folder: Path, bound: float | None) -> tuple[list[Path], list[tuple[Path, Path]] | None, str]:
    """A folder's frame files in order, its flow files as (x, y) pairs (None without flow files or
    without `bound`), and a sha256 of all their bytes (the import's fingerprint): everything that
    can be checked without decoding an image."""
    import hashlib

    files = _numbered(folder)
    if not files["img"]:
        raise ImportProblem("bad_frames", "no img_*.jpg frames")
    frames = _contiguous(files["img"], "frames")
    if len(frames) < 2:
        raise ImportProblem("too_few_frames", "fewer than 2 frames")
    pairs = None
    if (files["x"] or files["y"]) and bound is not None:
        if len(files["x"]) != len(files["y"]):
            raise ImportProblem("bad_flow", f"{len(files['x'])} flow_x images but {len(files['y'])} flow_y images")
        pairs = list(zip(_contiguous(files["x"], "flow_x"), _contiguous(files["y"], "flow_y"), strict=True))
        if len(pairs) != len(frames) - 1:
            raise ImportProblem("bad_flow", f"{len(pairs)} flow images for {len(frames)} frames; expected one per pair ({len(frames) - 1})")
    digest = hashlib.sha256()
    for path in frames + [path for pair in pairs or [] for path in pair]:
        digest.update(path.read_bytes())
    return frames, pairs, digest.hexdigest()


def decode_rawframes(frame_paths: list[Path], pairs: list[tuple[Path, Path]] | None, bound: float | None):
    """The frames (T, H, W, 3) uint8 RGB and the flow (T-1, H, W, 2) float32 px (or None) of `list_rawframes`."""
    frames = [_read_image(path, grey=False) for path in frame_paths]
    if len({frame.shape for frame in frames}) != 1:
        raise ImportProblem("bad_frames", f"frames differ in size: {sorted({frame.shape[1::-1] for frame in frames})}")
    if pairs is None:
        return np.stack(frames), None
    flow = []
    for x_path, y_path in pairs:
        pair = np.stack([_read_image(x_path, grey=True), _read_image(y_path, grey=True)], axis=-1)
        if pair.shape[:2] != frames[0].shape[:2]:
            raise ImportProblem("bad_flow", f"flow images are {pair.shape[1]}x{pair.shape[0]}, frames "
                                            f"{frames[0].shape[1]}x{frames[0].shape[0]}: not the same video's")  # fmt: skip
        flow.append(dequantise_flow(pair, bound))
    return np.stack(frames), np.stack(flow)


@dataclass(frozen=True)
class ImportTask:
    relpath: str  # the video's folder under the rawframes root
    root: str
    store: str
    decode: DecodeParams
    flow: FlowParams
    bound: float | None  # px of the flow images' 8 bits (None: import frames only)
    fps: float


def _resized(frames: np.ndarray, flow: np.ndarray | None, short_side: int | None):
    """Frames (and flow, its vectors scaled alike) at `decode.short_side`, as decode stores them."""
    height, width = frames.shape[1:3]
    size = output_size(width, height, short_side)
    if size == (width, height):
        return frames, flow
    frames = np.stack([cv2.resize(frame, size, interpolation=cv2.INTER_AREA) for frame in frames])
    if flow is not None:
        scale = np.array([size[0] / width, size[1] / height], np.float32)
        flow = np.stack([cv2.resize(pair, size, interpolation=cv2.INTER_AREA) * scale for pair in flow])
    return frames, flow


def import_task(task: ImportTask) -> dict:
    """One folder into the store (frames, and flow when there is some), or its failure (reason,
    detail). Images are decoded only when an array is missing or its fingerprint has changed."""
    video_id = scan.video_id(task.relpath)
    d, f = task.decode, task.flow
    group = layout.flow_group(f.method)
    fps = Fraction(task.fps).limit_denominator(1001)
    try:
        frame_paths, pairs, digest = list_rawframes(Path(task.root) / task.relpath, task.bound)
        frames_key = frames_fingerprint(digest, d, layout.STORE_VERSION)
        flow_key = None
        if pairs is not None:
            flow_key = fingerprint(frames_key, "imported", task.bound, f.precision, f.chunk_frames, f.shard_frames,
                                   f.moving_threshold, layout.STORE_VERSION)  # fmt: skip
        frames_meta = stores.array_meta(task.store, layout.FRAMES_GROUP, video_id) or {}
        flow_meta = (stores.array_meta(task.store, group, video_id) or {}) if flow_key else {}
        written = frames_meta.get("attributes", {}).get("fingerprint") != frames_key or (
            flow_key is not None and flow_meta.get("attributes", {}).get("fingerprint") != flow_key
        )
        if written:
            frames, flow = decode_rawframes(frame_paths, pairs, task.bound)
    except ImportProblem as exc:
        return {"video_id": video_id, "relpath": task.relpath, "reason": exc.reason, "detail": str(exc)}
    if written:
        source_size = [int(frames.shape[2]), int(frames.shape[1])]
        frames, flow = _resized(frames, flow, d.short_side)
        shape = frames.shape
        attrs = {"video_id": video_id, "relpath": task.relpath, "sha256": digest, "fps": [fps.numerator, fps.denominator],
                 "source_fps": [fps.numerator, fps.denominator], "source_frame_step": 1.0, "source_size": source_size,
                 "decoded_size": source_size, "scale": shape[2] / source_size[0], "params": {**d.model_dump(mode="json"), "imported": True},
                 "ffmpeg": "", "axes": list(layout.FRAMES_AXES), "fingerprint": frames_key, "store_version": layout.STORE_VERSION}  # fmt: skip
        stores.write_frames(task.store, video_id, [frames], height=shape[1], width=shape[2], chunk_frames=d.chunk_frames,
                            shard_frames=d.shard_frames, attrs=attrs, codec=d.codec, quality=d.quality)  # fmt: skip
        if flow is not None:
            stats = {name: values.tolist() for name, values in flow_stats(flow, f.moving_threshold).items()}
            _write_imported_flow(task, video_id, flow, frames_key, flow_key, stats)
    else:  # both arrays as this import would write them: their metadata says all the tables need
        shape, source_size = frames_meta["shape"], frames_meta["attributes"]["source_size"]
        stats = flow_meta.get("attributes", {}).get("stats")
    decoded = {"video_id": video_id, "relpath": task.relpath, "array": f"{layout.FRAMES_GROUP}/{video_id}", "num_frames": shape[0],
               "height": shape[1], "width": shape[2], "fps_num": fps.numerator, "fps_den": fps.denominator, "source_frame_step": 1.0,
               "scale": shape[2] / source_size[0]}  # fmt: skip
    if flow_key is None:
        return {"video_id": video_id, "decoded": decoded, "written": written}
    flowed = {"video_id": video_id, "relpath": task.relpath, "array": f"{group}/{video_id}", "method": f.method,
              "num_pairs": shape[0] - 1, "fingerprint": flow_key}  # fmt: skip
    return {"video_id": video_id, "decoded": decoded, "flowed": flowed, "stats": stats_rows(video_id, stats), "written": written}


def _write_imported_flow(task: ImportTask, video_id: str, flow: np.ndarray, frames_key: str, key: str, stats: dict) -> None:
    f, group, step = task.flow, layout.flow_group(task.flow.method), 2 * task.bound / 255
    height, width = flow.shape[1:3]
    dtype = layout.FLOW_DTYPE if f.precision is None else layout.FLOW_FIXED_DTYPE
    partial = stores.create_partial(task.store, group, video_id, shape=flow.shape, dtype=dtype,
                                    chunks=(f.chunk_frames, height, width, 2), shards=(f.shard_frames, height, width, 2),
                                    axes=layout.FLOW_AXES, codec_chain=codecs.flow_codecs(f.precision))  # fmt: skip
    try:
        stores.open_partial(partial)[:] = codecs.stored_flow(flow, f.precision)
        stores.publish(task.store, group, video_id, partial, {
            "video_id": video_id, "method": f.method, "frames_fingerprint": frames_key, "fingerprint": key,
            "estimator": {"name": "imported", "from": "8-bit flow images (denseflow, mmaction2)", "bound_px": task.bound,
                          "quantisation_step_px": step},
            "imported": True, "quantisation_step_px": step, "axes": list(layout.FLOW_AXES), "store_version": layout.STORE_VERSION,
            "stats": stats, **(layout.fixed_point_attrs(f.precision) if f.precision is not None else {}),
        })  # fmt: skip
    finally:
        stores.discard_partial(partial)


@locks.holding("store", "import-rawframes")
def import_rawframes(root: str | Path, store: str | Path, decode_out: str | Path, flow_out: str | Path, decode: DecodeParams,
                     flow: FlowParams, *, bound: float | None, fps: float, scheduler: str | None = None,
                     workers: int | None = None) -> Summary:  # fmt: skip
    """Every video folder of an mmaction2/denseflow rawframes tree into the store, with the decode
    stage's tables (and, with flow images and a `bound`, the flow stage's), so `sample`, `train`
    and `evaluate` run on it unchanged. A folder that cannot be imported goes to failures.parquet
    with its reason; the rest go through. A re-run skips arrays whose fingerprint is unchanged."""
    summary = Summary("import")
    for folder in (decode_out, flow_out) if bound is not None else (decode_out,):
        sweep(folder)  # what a killed run left: its tables' temporary files, a committed set to finish
    folders = find_rawframe_folders(root)
    wanted = {scan.video_id(relpath) for relpath in folders}  # as the decode stage: the store holds what the tree holds
    stale = stores.prepare_group(store, layout.FRAMES_GROUP, wanted)
    stale += stores.prepare_group(store, layout.flow_group(flow.method), wanted) if bound is not None else 0
    if stale:
        summary.add("stale arrays removed", stale)
    tasks = [ImportTask(relpath, str(root), str(store), decode, flow, bound, fps) for relpath in folders]
    results = sorted(map_progress(import_task, tasks, scheduler=scheduler, workers=workers, desc="import", unit="video"),
                     key=lambda r: r["video_id"])  # fmt: skip
    failures = [{"stage": "import", "video_id": r["video_id"], "relpath": r["relpath"], "reason": r["reason"], "detail": r["detail"]}
                for r in results if "reason" in r]  # fmt: skip
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
    return summary
