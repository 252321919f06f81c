"""Reading an mmaction2 / denseflow rawframes tree (`<video>/img_00001.jpg`, `flow_x_00001.jpg`,
`flow_y_00001.jpg`, flow quantised to 8 bits over +-bound): finding the video folders, listing and
fingerprinting their files, checking the images' headers, and decoding them a block at a time at the
stored size. Each problem is an `ImportProblem` with the failure reason of its video; the import
stage (stages/import_rawframes.py) writes the store and the tables.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from pipeline.interop.mmaction import dequantise_flow
from pipeline.io import images, scan
from schemas.errors import MissingInputError

IMAGE_FILE = re.compile(r"^(?P<kind>img|flow_x|flow_y|x|y)_(?P<index>\d+)\.(?:jpg|jpeg|png)$", re.IGNORECASE)
# What one source image may cost an import worker, per pixel: its RGB, the two flow planes, the
# float32 flow pair and its resized copy. The memory budget / this is the largest image read.
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
                                                 f"this import reads may take ({largest / 2**20:,.0f} MiB)")  # fmt: skip
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
        return ImportProblem("too_large", str(exc))
    return ImportProblem("bad_flow" if flow else "bad_frames", str(exc))


def max_pixels(memory_mb: int) -> int:
    """The largest image (pixels) an import worker reads within `memory_mb` MiB."""
    return memory_mb * 2**20 // IMPORT_BYTES_PER_PIXEL


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An image at the stored (width, height), as decode stores frames (area averaging)."""
    return image if image.shape[1::-1] == size else cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def frame_blocks(frame_paths: list[Path], size: tuple[int, int], block: int, max_pixels: int) -> Iterator[np.ndarray]:
    """The frames (n, H, W, 3) uint8 RGB at the stored `size`, `block` at a time: one source image in memory at once."""
    for start in range(0, len(frame_paths), block):
        yield np.stack([_resize(_read_image(path, False, max_pixels), size) for path in frame_paths[start : start + block]])


def flow_blocks(pairs: list[tuple[Path, Path]], bound: float, source: tuple[int, int], size: tuple[int, int], block: int,
                max_pixels: int) -> Iterator[tuple[int, np.ndarray]]:  # fmt: skip
    """(first pair, (n, H, W, 2) float32 px at the stored `size`, vectors scaled with it), `block` pairs at a time."""
    scale = np.array([size[0] / source[0], size[1] / source[1]], np.float32)
    for start in range(0, len(pairs), block):
        flows = []
        for x_path, y_path in pairs[start : start + block]:
            pair = np.stack([_read_image(x_path, True, max_pixels), _read_image(y_path, True, max_pixels)], axis=-1)
            flow = dequantise_flow(pair, bound)
            flows.append(flow if size == source else cv2.resize(flow, size, interpolation=cv2.INTER_AREA) * scale)
        yield start, np.stack(flows)
