"""The Zarr v3 store: writing one video's array atomically, and finding what is already there.

An array is built under `<store>/.partial/` and renamed into its group only when complete, so a
killed run leaves either the old finished array, or none, never a partial one that looks finished.
Layout and codecs are declared in schemas/store.py.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import zarr
import zarr.codecs

from schemas import store as layout


def group_path(store: str | Path, group: str) -> Path:
    return Path(store) / group


def ensure_group(store: str | Path, group: str) -> zarr.Group:
    """Create (or open) the store's root group and every group on the way to `group` ("flow/tvl1")."""
    path = Path(store)
    zarr.open_group(store=str(path), mode="a", zarr_format=3)
    for part in group.split("/"):
        path = path / part
        opened = zarr.open_group(store=str(path), mode="a", zarr_format=3)
    return opened


def array_meta(store: str | Path, group: str, name: str) -> dict[str, Any] | None:
    """The metadata (shape, attributes, ...) of a finished array, or None if there is none
    (cheap: reads one small JSON file)."""
    meta = group_path(store, group) / name / "zarr.json"
    try:
        return json.loads(meta.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def array_attrs(store: str | Path, group: str, name: str) -> dict[str, Any] | None:
    """Attributes of a finished array, or None if there is none."""
    meta = array_meta(store, group, name)
    return None if meta is None else meta.get("attributes", {})


def finished_arrays(store: str | Path, group: str) -> list[str]:
    """Names of the finished arrays in `group`."""
    root = group_path(store, group)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "zarr.json").is_file())


def remove_array(store: str | Path, group: str, name: str) -> None:
    shutil.rmtree(group_path(store, group) / name, ignore_errors=True)


def clear_partial(store: str | Path, group: str) -> None:
    """Remove leftovers of killed runs (never finished arrays)."""
    shutil.rmtree(Path(store) / layout.PARTIAL_DIR / group, ignore_errors=True)


def prepare_group(store: str | Path, group: str, wanted: set[str]) -> int:
    """Before a stage writes `group`: create it, drop leftovers of killed runs, and remove finished
    arrays whose video is no longer wanted (so outputs always match inputs). Returns how many."""
    ensure_group(store, group)
    clear_partial(store, group)
    stale = [name for name in finished_arrays(store, group) if name not in wanted]
    for name in stale:
        remove_array(store, group, name)
    return len(stale)


def create_partial(
    store: str | Path, group: str, name: str, *, shape: tuple[int, ...], dtype: str, chunks: tuple[int, ...],
    shards: tuple[int, ...], axes: tuple[str, ...],
) -> Path:  # fmt: skip
    """Create an empty array under `.partial/` to be filled (possibly by several processes, each
    writing whole shards) and then published with `publish`. Returns its path."""
    ensure_group(store, group)
    partial_root = Path(store) / layout.PARTIAL_DIR / group
    partial_root.mkdir(parents=True, exist_ok=True)
    path = partial_root / f"{name}.{uuid.uuid4().hex}"
    zarr.create_array(
        store=str(path), shape=shape, dtype=dtype, chunks=chunks, shards=shards,
        compressors=zarr.codecs.ZstdCodec(level=layout.ZSTD_LEVEL), fill_value=0, dimension_names=axes,
        zarr_format=3,
        # Our arrays are never all fill value; skipping zarr's check for "empty" chunks halves the
        # write cost (bench/decode.py), and every chunk is then stored, which is what we want.
        config={"write_empty_chunks": True},
    )  # fmt: skip
    return path


def open_partial(path: str | Path) -> zarr.Array:
    return zarr.open_array(store=str(path), mode="r+", zarr_format=3, config={"write_empty_chunks": True})


def publish(store: str | Path, group: str, name: str, partial: str | Path, attrs: dict[str, Any]) -> None:
    """Store `attrs` (plus `num_frames`, the first axis) and move the finished array into `group`."""
    array = open_partial(partial)
    array.attrs.update({**attrs, "num_frames": array.shape[0]})
    final = group_path(store, group) / name
    if final.exists():
        shutil.rmtree(final)
    os.rename(partial, final)


def discard_partial(partial: str | Path) -> None:
    shutil.rmtree(partial, ignore_errors=True)


def write_frames(
    store: str | Path,
    name: str,
    blocks: Iterable[np.ndarray],
    *,
    height: int,
    width: int,
    chunk_frames: int,
    shard_frames: int,
    attrs: dict[str, Any],
) -> int:
    """Write blocks of (n, H, W, 3) uint8 frames as `frames/<name>`, atomically; returns the count.

    Blocks of any length are regrouped into whole shards so that each shard file is written once.
    `attrs` are stored with the array, plus `num_frames`, once the last frame is written.
    """
    group = layout.FRAMES_GROUP
    tmp = create_partial(
        store, group, name, shape=(0, height, width, 3), dtype=layout.FRAMES_DTYPE,
        chunks=layout.frames_chunks(height, width, chunk_frames), shards=layout.frames_shards(height, width, shard_frames),
        axes=layout.FRAMES_AXES,
    )  # fmt: skip
    try:
        array = open_partial(tmp)
        count = 0
        for shard in _regroup(blocks, shard_frames, (height, width, 3)):
            array.resize((count + len(shard), height, width, 3))
            array[count : count + len(shard)] = shard
            count += len(shard)
        publish(store, group, name, tmp, attrs)
        return count
    finally:
        discard_partial(tmp)


def _regroup(blocks: Iterable[np.ndarray], size: int, frame_shape: tuple[int, ...]):
    """Re-cut a stream of frame blocks into blocks of exactly `size` frames (the last may be short)."""
    pending: list[np.ndarray] = []
    have = 0
    for block in blocks:
        if block.shape[1:] != frame_shape:
            raise ValueError(f"frame block of shape {block.shape[1:]} where {frame_shape} was expected")
        pending.append(block)
        have += len(block)
        while have >= size:
            joined = np.concatenate(pending)
            yield joined[:size]
            pending, have = [joined[size:]], have - size
    if have:
        yield np.concatenate(pending)


def open_frames(store: str | Path, name: str) -> zarr.Array:
    """A finished frames array, read-only."""
    return open_finished(store, layout.FRAMES_GROUP, name, "decode")


def open_flow(store: str | Path, method: str, name: str) -> zarr.Array:
    """A finished flow array, read-only."""
    return open_finished(store, layout.flow_group(method), name, "flow")


def open_finished(store: str | Path, group: str, name: str, stage: str) -> zarr.Array:
    path = group_path(store, group) / name
    if not (path / "zarr.json").is_file():
        raise FileNotFoundError(f"no {group} array for video {name!r} in {store}; run the {stage} stage")
    return zarr.open_array(store=str(path), mode="r", zarr_format=3)
