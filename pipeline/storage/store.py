"""The Zarr v3 store: writing one video's array atomically, finding what is already there, and
reading it back loudly.

An array is built under `<store>.partial/` (beside the store, so the store itself holds only
finished arrays) and renamed into its group only when complete, so a killed run leaves either the
old finished array, or none, never a partial one that looks finished. Layout is declared in
schemas/store.py, codecs in pipeline/storage/codecs.py. Arrays opened here raise `CorruptChunkError`, which
names the video, the array and the chunk, for a chunk that does not decode or a shard file that is
gone, where zarr would return the fill value for the latter; they give fixed-point flow as float16
pixels, as every reader expects.

Every function here also takes the store as an fsspec URL (`s3://bucket/store.zarr`, `gs://...`),
opened by zarr's FsspecStore. Object stores have no rename, so there an array is written in place and
its `zarr.json` is the commit: `create_partial` first deletes any old array of that name (its
`zarr.json` first, so it never reads as finished while it goes), the shards are written where they
belong while the array's metadata is held aside (`<store>.partial/<group>/<name>.<random>.json`,
for the processes that fill it), and `publish` writes `zarr.json` last, in one PUT, after checking
the writer's lease (pipeline/storage/locks.py). A killed run leaves shards without a `zarr.json`,
which no reader opens as an array and the stage's next start deletes (`clear_partial`).
Credentials and an S3-compatible endpoint come from the environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3, ...) or fsspec's configuration, as s3fs and botocore read
them; nothing here takes, stores or prints them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator

import fsspec
import google_crc32c
import numpy as np
import zarr
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.codecs import ShardingCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from pipeline.storage import codecs, durable, locks
from pipeline.storage.faults import CorruptChunkError
from schemas import paths
from schemas.paths import is_url
from schemas import store as layout
from schemas.errors import MissingInputError

INDEX_CODECS = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]  # zarr's default shard index
EMPTY_CHUNK = 2**64 - 1  # a shard index's offset (and length) for a chunk it does not hold
TRASH_SUFFIX = ".trash"  # a replaced or removed array, renamed aside into the partial root before it is deleted


def group_path(store: str | Path, group: str) -> Path:
    return Path(store) / group


def location(store: str | Path) -> str:
    """The store as tasks in other processes are given it: a URL as it is, a local path made absolute."""
    return str(store).rstrip("/") if is_url(store) else str(Path(store).absolute())


def array_location(store: str | Path, group: str, name: str) -> str:
    """Where the array `group/name` of `store` is: a URL below a URL, a local path below a path."""
    return f"{str(store).rstrip('/')}/{group}/{name}" if is_url(store) else str(group_path(store, group) / name)


def ensure_group(store: str | Path, group: str) -> zarr.Group:
    """Create (or open) the store's root group and every group on the way to `group` ("flow/tvl1")."""
    root = location(store) if is_url(store) else str(store)
    opened = zarr.open_group(store=root, mode="a", zarr_format=3)
    parts = group.split("/")
    for depth in range(1, len(parts) + 1):
        opened = zarr.open_group(store=f"{root}/{'/'.join(parts[:depth])}", mode="a", zarr_format=3)
    return opened


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) of a URL, as fsspec's configuration and the environment make it."""
    return fsspec.core.url_to_fs(url)


def array_meta(store: str | Path, group: str, name: str) -> dict[str, Any] | None:
    """The metadata (shape, attributes, ...) of a finished array, or None if there is none
    (cheap: reads one small JSON file)."""
    meta = f"{array_location(store, group, name)}/zarr.json"
    try:
        if is_url(store):
            with fsspec.open(meta, "rt") as handle:
                return json.loads(handle.read())
        return json.loads(Path(meta).read_text())
    except (OSError, ValueError):  # missing, unreadable, not UTF-8 or not JSON: no finished array
        return None


def array_attrs(store: str | Path, group: str, name: str) -> dict[str, Any] | None:
    """Attributes of a finished array, or None if there is none."""
    meta = array_meta(store, group, name)
    return None if meta is None else meta.get("attributes", {})


def finished_arrays(store: str | Path, group: str) -> list[str]:
    """Names of the finished arrays in `group`."""
    if is_url(store):
        return sorted(_remote_arrays(store, group)[0])
    root = group_path(store, group)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "zarr.json").is_file())


def remove_array(store: str | Path, group: str, name: str) -> None:
    """Delete a finished array; `name` must be a video id (one safe path component), so nothing
    outside `group` can ever be deleted, whatever a table says."""
    paths.check_id(name, f"removing an array from {group_path(store, group)}")
    _delete_finished(store, group, name)


def partial_root(store: str | Path) -> Path:
    """Where arrays are built: `<store>.partial`, a sibling of the store on the same file system."""
    store = Path(store)
    return store.with_name(store.name + layout.PARTIAL_SUFFIX)


def _remote_arrays(store: str | Path, group: str) -> tuple[set[str], set[str]]:
    """(finished, unfinished) names of the arrays under `group` of the store at a URL: those with a
    `zarr.json`, and those with only other objects (what a killed run left). One listing of the group."""
    fs, root = filesystem(f"{location(store)}/{group}")
    try:
        keys = fs.find(root)
    except FileNotFoundError:
        return set(), set()
    names: dict[str, bool] = {}
    for key in keys:
        parts = key[len(root.rstrip("/")) + 1 :].split("/")
        if len(parts) >= 2 and not parts[0].startswith("."):
            names[parts[0]] = names.get(parts[0], False) or parts[1:] == ["zarr.json"]
    return {n for n, done in names.items() if done}, {n for n, done in names.items() if not done}


def _remove_remote(target: str) -> None:
    """Delete the array at URL `target`: its `zarr.json` first (from then on it is not an array), then the rest."""
    fs, path = filesystem(target)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(f"{path}/zarr.json")
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)


def clear_partial(store: str | Path, group: str) -> None:
    """Remove leftovers of killed runs (never finished arrays, arrays renamed aside to be deleted,
    zarr's temporary `zarr.*.partial` metadata files of the groups), also from inside stores written
    before work in progress moved beside the store. Also makes the groups' metadata on the way to
    `group` durable (fsync), before any array is published into it. At a URL: the held-aside
    metadata, and every array of `group` without a `zarr.json`."""
    if is_url(store):
        fs, held = filesystem(f"{location(store)}{layout.PARTIAL_SUFFIX}/{group}")
        with contextlib.suppress(FileNotFoundError):
            fs.rm(held, recursive=True)
        for name in _remote_arrays(store, group)[1]:
            _remove_remote(array_location(store, group, name))
        return
    shutil.rmtree(partial_root(store) / group, ignore_errors=True)
    for folder in [Path(store) / part for part in (".", *reversed(Path(group).parents[:-1]), group)]:
        for leftover in folder.glob("zarr.*.partial"):
            leftover.unlink(missing_ok=True)
        if (folder / "zarr.json").is_file():
            durable.fsync_file(folder / "zarr.json")
            durable.fsync_dir(folder)
    legacy = Path(store) / layout.LEGACY_PARTIAL_DIR
    shutil.rmtree(legacy / group, ignore_errors=True)
    for folder in [*Path(group).parents[:-1], Path(".")]:  # its parents if empty, deepest first
        with contextlib.suppress(OSError):
            (legacy / folder).rmdir()


def create_partial(
    store: str | Path, group: str, name: str, *, shape: tuple[int, ...], dtype: str, chunks: tuple[int, ...],
    shards: tuple[int, ...], axes: tuple[str, ...], codec_chain: dict[str, Any] | None = None,
) -> Path:  # fmt: skip
    """Create an empty array under `<store>.partial/` to be filled (possibly by several processes,
    each writing whole shards) and then published with `publish`. `codec_chain`: zarr.create_array's
    codec keywords (pipeline/storage/codecs.py; default lossless zstd). Returns its path (at a URL:
    the URL of its metadata held aside, for `open_partial`)."""
    options = dict(shape=shape, dtype=dtype, chunks=chunks, shards=shards, **(codec_chain or codecs.lossless()), fill_value=0,
                   dimension_names=axes, zarr_format=3, config={"write_empty_chunks": True})  # fmt: skip
    if is_url(store):
        return _create_remote(store, group, name, options)
    ensure_group(store, group)
    folder = partial_root(store) / group
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.{uuid.uuid4().hex}"
    # Our arrays are never all fill value; skipping zarr's check for "empty" chunks (config above)
    # halves the write cost (bench/decode.py), and every chunk is then stored, which is what we want.
    zarr.create_array(store=str(path), **options)
    return path


def open_partial(path: str | Path) -> zarr.Array:
    if is_url(path):
        return RemotePartial.open(str(path))
    # zarr.open_array does not apply a `config` (zarr 3.1): set on the opened array, or chunks of fill
    # values would be left out, and a shard of nothing but those would have no file at all.
    return zarr.open_array(store=str(path), mode="r+", zarr_format=3).with_config({"write_empty_chunks": True})


def _create_remote(store: str | Path, group: str, name: str, options: dict[str, Any]) -> str:
    ensure_group(store, group)
    target = array_location(store, group, name)
    _remove_remote(target)
    metadata = zarr.create_array(store=zarr.storage.MemoryStore(), **options).metadata  # what zarr would write, held aside
    held = f"{location(store)}{layout.PARTIAL_SUFFIX}/{group}/{name}.{uuid.uuid4().hex}.json"
    fs, path = filesystem(held)
    fs.pipe_file(path, json.dumps({"target": target, "metadata": json.loads(_metadata_bytes(metadata))}).encode())
    return held


def _metadata_bytes(metadata: Any) -> bytes:
    """An array's metadata as zarr writes it to its zarr.json."""
    return metadata.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes()


class RemotePartial:
    """An array being written at a URL: its shards go where they belong, its metadata stays in this
    process (and held aside) until `publish` writes it as `zarr.json`. Reads and writes as a zarr
    array; `resize` changes only the shape held here (a local array's zarr.json would be rewritten)."""

    def __init__(self, held: str, target: str, metadata: Any) -> None:
        self.held, self.target = held, target
        self._store = zarr.storage.FsspecStore.from_url(target, read_only=False)
        self._set(metadata)

    @classmethod
    def open(cls, held: str) -> RemotePartial:
        fs, path = filesystem(held)
        spec = json.loads(fs.cat_file(path))
        return cls(held, spec["target"], spec["metadata"])

    def _set(self, metadata: Any) -> None:
        from zarr.core.array import AsyncArray
        from zarr.storage import StorePath

        self.array = zarr.Array(AsyncArray(metadata, StorePath(self._store), config={"write_empty_chunks": True}))

    @property
    def metadata(self) -> Any:
        return self.array.metadata

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    def resize(self, shape: tuple[int, ...]) -> None:
        self._set(self.array.metadata.update_shape(tuple(shape)))

    def __getitem__(self, selection: Any) -> np.ndarray:
        return self.array[selection]

    def __setitem__(self, selection: Any, value: Any) -> None:
        self.array[selection] = value

    def publish(self, attrs: dict[str, Any], lease: str | None, store: str) -> None:
        """Check the lease, then write `zarr.json` (the metadata with `attrs` and `num_frames`): the commit."""
        metadata = self.array.metadata.update_attributes({**self.array.metadata.attributes, **attrs, "num_frames": self.shape[0]})
        body = _metadata_bytes(metadata)
        locks.check_lease(store, lease)
        durable.kill_point("publish.aside")
        fs, path = filesystem(self.target)
        fs.pipe_file(f"{path}/zarr.json", body)
        durable.kill_point("publish.renamed")
        with contextlib.suppress(FileNotFoundError):
            held_fs, held_path = filesystem(self.held)
            held_fs.rm_file(held_path)


def partial_shape(partial: str | Path) -> tuple[int, ...] | None:
    """The shape an array being written was created with (None if it is gone), from its metadata."""
    try:
        if is_url(partial):
            fs, path = filesystem(str(partial))
            return tuple(json.loads(fs.cat_file(path))["metadata"]["shape"])
        return tuple(json.loads((Path(partial) / "zarr.json").read_text())["shape"])
    except (OSError, ValueError, KeyError):
        return None


def publish(store: str | Path, group: str, name: str, partial: str | Path | RemotePartial, attrs: dict[str, Any], *,
            lease: str | None = None) -> None:  # fmt: skip
    """Store `attrs` (plus `num_frames`, the first axis) and move the finished array into `group`
    (at a URL: write its zarr.json, if the run's `lease` is still held; see the module doc).

    Never through a state that looks finished but is not: the new array is fsynced whole (shards,
    zarr.json, folders) under the partial root; an old array is first renamed aside into the partial
    root (from then until the next rename there is no array of that name, never a broken one), the
    new one renamed in, the group folder fsynced, and only then is the old one deleted. A kill
    anywhere leaves the old array, none, or the new one; what it leaves in the partial root the
    stage's next start clears (`clear_partial`)."""
    if is_url(store):
        (partial if isinstance(partial, RemotePartial) else RemotePartial.open(str(partial))).publish(attrs, lease, location(store))
        return
    array = open_partial(partial)
    array.attrs.update({**attrs, "num_frames": array.shape[0]})
    durable.fsync_tree(partial)
    final = group_path(store, group) / name
    aside = _aside(store, group, name)
    durable.kill_point("publish.aside")
    os.rename(partial, final)
    durable.fsync_dir(final.parent)
    durable.fsync_dir(Path(partial).parent)
    durable.kill_point("publish.renamed")
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _aside(store: str | Path, group: str, name: str) -> Path | None:
    """Rename the finished array `group/name`, if there is one, into the partial root (where the
    stage's next start clears it, were this run killed before deleting it); its new path, or None."""
    folder = partial_root(store) / group
    folder.mkdir(parents=True, exist_ok=True)
    aside = folder / f"{name}.{uuid.uuid4().hex}{TRASH_SUFFIX}"
    try:
        os.rename(group_path(store, group) / name, aside)
    except FileNotFoundError:
        return None
    return aside


def _delete_finished(store: str | Path, group: str, name: str) -> None:
    """Delete a finished array without ever showing a part of it: renamed aside first, whole (at a
    URL: its zarr.json first)."""
    if is_url(store):
        _remove_remote(array_location(store, group, name))
        return
    aside = _aside(store, group, name)
    if aside is not None:
        durable.fsync_dir(group_path(store, group))
        shutil.rmtree(aside, ignore_errors=True)


def discard_partial(partial: str | Path | RemotePartial) -> None:
    """Drop an array being written (at a URL: its shards and held metadata; never a published one)."""
    if isinstance(partial, RemotePartial) or is_url(partial):
        try:
            partial = partial if isinstance(partial, RemotePartial) else RemotePartial.open(str(partial))
        except FileNotFoundError:
            return  # published, or discarded already
        fs, held = filesystem(partial.held)
        if fs.exists(f"{filesystem(partial.target)[1]}/zarr.json"):
            return  # published: nothing to discard
        _remove_remote(partial.target)
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(held)
        return
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
    codec: str = "zstd",
    quality: int = 95,
    lease: str | None = None,
) -> int:
    """Write blocks of (n, H, W, 3) uint8 frames as `frames/<name>`, atomically; returns the count.

    Blocks of any length are regrouped into whole shards so that each shard file is written once.
    `attrs` are stored with the array, plus `num_frames`, once the last frame is written. `codec`:
    zstd (lossless, `chunk_frames` frames per chunk) or an image format at `quality` (one frame per chunk).
    `lease`: the writing run's lease on a store at a URL (pipeline/storage/locks.py).
    """
    group = layout.FRAMES_GROUP
    tmp = create_partial(
        store, group, name, shape=(0, height, width, 3), dtype=layout.FRAMES_DTYPE,
        chunks=layout.frames_chunks(height, width, chunk_frames, codec),
        shards=layout.frames_shards(height, width, shard_frames), axes=layout.FRAMES_AXES,
        codec_chain=codecs.frames_codecs(codec, quality),
    )  # fmt: skip
    try:
        array = open_partial(tmp)
        count = 0
        for shard in _regroup(blocks, shard_frames, (height, width, 3)):
            array.resize((count + len(shard), height, width, 3))
            array[count : count + len(shard)] = shard
            count += len(shard)
        publish(store, group, name, array if isinstance(array, RemotePartial) else tmp, attrs, lease=lease)
    except BaseException:  # only an array that was not published is left to discard (at a URL that is a request)
        discard_partial(tmp)
        raise
    return count


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


def damage(store: str | Path, group: str, name: str, *, verify: bool = False) -> str | None:
    """Why the finished array `group/name` cannot be trusted, or None: its metadata does not read, a
    shard file is missing, or a shard's index (its last bytes: where each chunk lies, and their
    checksum) is damaged or points past the file's end, as truncation leaves it (cheap: a stat and
    one small read per shard); with `verify`, also a chunk that does not decode (reads everything).
    A producing stage rewrites a damaged array instead of skipping it for its matching fingerprint."""
    try:
        array = open_finished(store, group, name, "decode" if group == layout.FRAMES_GROUP else "flow")
        array.check_indexes()
        if verify:
            shard = (array.shards or array.chunks)[0]
            for start in range(0, array.shape[0], shard):
                array.stored(slice(start, start + shard))
    except (CorruptChunkError, FileNotFoundError) as exc:
        return str(exc)
    return None


def open_frames(store: str | Path, name: str) -> StoredArray:
    """A finished frames array, read-only: (T, H, W, 3) uint8."""
    return open_finished(store, layout.FRAMES_GROUP, name, "decode")


def open_flow(store: str | Path, method: str, name: str) -> StoredArray:
    """A finished flow array, read-only: (T-1, H, W, 2) float16 pixels, however it is stored."""
    return open_finished(store, layout.flow_group(method), name, "flow")


def open_finished(store: str | Path, group: str, name: str, stage: str) -> StoredArray:
    """A finished array, read-only, from a local store or one at an fsspec URL."""
    where = array_location(store, group, name)
    if not is_url(store) and not (Path(where) / "zarr.json").is_file():
        raise _missing(where, group, name, stage)
    return open_stored(where, group, name, stage)


def open_stored(where: str, group: str, name: str, stage: str) -> StoredArray:
    """The array at `where` (a path or URL) as a StoredArray; metadata that does not read (not
    UTF-8, not JSON, not an array, unreadable) raises CorruptChunkError naming the video and array."""
    try:  # for a URL, one request fewer than asking first; zarr's ArrayNotFoundError is a FileNotFoundError
        array = zarr.open_array(store=where, mode="r", zarr_format=3)
    except FileNotFoundError:
        raise _missing(where, group, name, stage) from None
    except Exception as exc:  # zarr raises many kinds for bad metadata: every one is this array's damage
        raise damaged(f"video {name!r}, array {group}/{name}: its metadata (zarr.json) does not read ({type(exc).__name__}: {exc})",
                      group, name) from exc  # fmt: skip
    return StoredArray(array, group, name)


def damaged(message: str, group: str, video_id: str, *, imported: bool = False) -> CorruptChunkError:
    """The error for damage found in the array `group/video_id` (shown with how to repair it)."""
    return CorruptChunkError(message, video_id, group, imported)


def _imported(attrs: dict[str, Any]) -> bool:
    """Whether import-rawframes wrote the array (frames record it in their params, flow at the top)."""
    return bool(attrs.get("imported") or (attrs.get("params") or {}).get("imported"))


def _missing(where: str, group: str, name: str, stage: str) -> MissingInputError:
    return MissingInputError(f"no {group} array for video {name!r} in {where}; run the {stage} stage")


class StoredArray:
    """A finished zarr array of one video whose reads fail loudly.

    zarr reads a missing shard file as the fill value, and a lossy image decoder can turn damaged
    bytes into plausible pixels; every chunk carries a CRC32C (pipeline/storage/codecs.py), and on opening
    every shard file is checked to be there. A read that fails raises `CorruptChunkError` naming the
    video, the array (`group`), the chunk and the frames it holds. Everything else (shape, dtype,
    attrs, ...) is the zarr array's.
    """

    def __init__(self, array: zarr.Array, group: str, video_id: str) -> None:
        self.array, self.group, self.video_id = array, group, video_id
        # Fixed-point flow: int16 multiples of `scale_factor` px (CF's name, which xarray applies too).
        self.scale: float | None = array.attrs.get("scale_factor")
        self._check_shards()
        self._reader = ChunkReader.of(array)  # None: an array whose layout only zarr reads

    def __getattr__(self, name: str) -> Any:
        return getattr(self.array, name)

    @property
    def dtype(self) -> np.dtype:
        """What reads return: float16 for flow however it is stored."""
        return np.dtype(layout.FLOW_DTYPE) if self.scale is not None else self.array.dtype

    def __len__(self) -> int:
        return self.array.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self[:], dtype=dtype)

    def __getitem__(self, selection: Any) -> np.ndarray:
        return self.to_pixels(self.stored(selection))

    def stored(self, selection: Any) -> np.ndarray:
        """The values as stored (int16 steps for fixed-point flow), for a reader that keeps them
        (half the memory of float32 pixels) and converts only what it uses, with `to_pixels`. A
        range of frames of a layout this pipeline writes is read by `take` (through zarr's machinery a
        whole one-frame-a-chunk JPEG video took 1.8x as long)."""
        if self._reader is not None and isinstance(selection, slice):
            return self.take(np.arange(*selection.indices(len(self))))
        try:
            return self.array[selection]
        except (IndexError, TypeError):  # a bad selection, not bad data
            raise
        except Exception as exc:  # any codec error: locate it, then say where
            raise self._locate(selection, exc) from exc

    def take(self, frames: np.ndarray) -> np.ndarray:
        """Frames `frames` (any order, repeats allowed) as stored, each chunk they touch read and
        decoded once. Straight from the shard files where the array's layout is one this pipeline
        writes (`ChunkReader`: a fraction of zarr's cost per chunk), else through zarr."""
        frames = np.asarray(frames, dtype=np.int64)
        size = self.array.chunks[0]
        needed = np.unique(frames // size)
        if not len(needed):
            return np.empty((0, *self.array.shape[1:]), self.array.dtype)
        if self._reader is None:  # through zarr: each run of consecutive chunks in one read
            chunks = {}
            for run in np.split(needed, np.flatnonzero(np.diff(needed) != 1) + 1):
                block = self.stored(slice(int(run[0]) * size, (int(run[-1]) + 1) * size))
                chunks.update({c: block[(c - run[0]) * size : (c - run[0] + 1) * size] for c in run.tolist()})
        else:
            chunks = {}
            for c in needed.tolist():
                try:
                    chunks[c] = self._reader.chunk(c)
                except Exception as exc:
                    raise self._undecodable(c, exc) from exc
        out = np.empty((len(frames), *self.array.shape[1:]), self.array.dtype)
        for i, frame in enumerate(frames.tolist()):
            out[i] = chunks[frame // size][frame % size]
        return out

    def to_pixels(self, values: np.ndarray) -> np.ndarray:
        """Stored values as what a read returns: float16 pixels for flow, however stored."""
        return values if self.scale is None else codecs.from_fixed(values, self.scale)

    def _where(self, frames: tuple[int, int]) -> str:
        span = f"frame {frames[0]}" if frames[1] - frames[0] == 1 else f"frames {frames[0]}-{frames[1] - 1}"
        return f"video {self.video_id!r}, array {self.group}/{self.video_id}, {span}"

    def _damaged(self, message: str) -> CorruptChunkError:
        """The error for damage found in this array, ending with the command that repairs it."""
        return damaged(message, self.group, self.video_id, imported=_imported(self.array.attrs.asdict()))

    def _shard_keys(self) -> Iterator[tuple[str, str, tuple[int, int]]]:
        """(store key, key within the array, (first frame, end frame)) of each shard file the array should have."""
        per_shard = (self.array.shards or self.array.chunks)[0]
        length = self.array.shape[0]
        for index in range(-(-length // per_shard)):
            key = self.array.metadata.encode_chunk_key((index,) + (0,) * (self.array.ndim - 1))
            full = f"{self.array.path}/{key}" if self.array.path else key
            yield full, key, (index * per_shard, min((index + 1) * per_shard, length))

    def _check_shards(self) -> None:
        for full, key, frames in self._shard_keys():
            if not sync(self.array.store.exists(full)):
                raise self._damaged(f"{self._where(frames)}: shard file {key} is missing")

    def check_indexes(self) -> None:
        """Read each shard's index (zarr v3 sharding: a table of (offset, length) per chunk, with its
        CRC32C) and check it: its checksum, and each chunk lying within the file (a chunk the index
        marks absent is all fill value, which zarr does not store even when told to write empty
        chunks). Truncation or an overwritten end is found without reading the chunks.
        CorruptChunkError names the shard; arrays with another index layout are not checked."""
        codec = self.array.metadata.codecs[0]
        if not isinstance(codec, ShardingCodec) or [c.to_dict() for c in codec.index_codecs] != INDEX_CODECS:
            return
        if self.array.shards is None or self.array.chunks[1:] != self.array.shape[1:]:
            return  # chunks of whole frames only (every array of this pipeline's): one index entry per chunk of frames
        chunk = self.array.chunks[0]
        entries = self.array.shards[0] // chunk
        index_bytes = 16 * entries + 4
        at_end = codec.index_location == ShardingCodecIndexLocation.end
        for full, key, frames in self._shard_keys():
            size = sync(self.array.store.getsize(full))
            where = f"{self._where(frames)}: shard file {key}"
            if size < index_bytes:
                raise self._damaged(f"{where} is {size} bytes, too short for its index of {index_bytes}: truncated")
            request = SuffixByteRequest(index_bytes) if at_end else RangeByteRequest(0, index_bytes)
            raw = sync(self.array.store.get(full, default_buffer_prototype(), byte_range=request)).to_bytes()
            if google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
                raise self._damaged(f"{where}: its index (the file's {'last' if at_end else 'first'} {index_bytes} bytes) fails "
                                    f"its checksum: truncated or overwritten")  # fmt: skip
            table = np.frombuffer(raw[:-4], "<u8").reshape(entries, 2)
            held = -(-(frames[1] - frames[0]) // chunk)  # chunks this shard must hold
            begin, end = (0, size - index_bytes) if at_end else (index_bytes, size)
            for position, (offset, length) in enumerate(table[:held].tolist()):
                if offset == EMPTY_CHUNK:
                    continue
                if offset < begin or offset + length > end:
                    raise self._damaged(f"{where}: its index places chunk {frames[0] // chunk + position} at bytes "
                                        f"{offset}-{offset + length}, outside the file's {size}: truncated")  # fmt: skip

    def _undecodable(self, index: int, cause: Exception) -> CorruptChunkError:
        """Chunk `index` does not decode: the error naming the video, the array, its frames and the chunk."""
        size = self.array.chunks[0]
        frames = (index * size, min((index + 1) * size, self.array.shape[0]))
        chunk = (index,) + (0,) * (self.array.ndim - 1)
        return self._damaged(f"{self._where(frames)}, chunk {chunk}: does not decode ({cause})")

    def _locate(self, selection: Any, cause: Exception) -> CorruptChunkError:
        """Read the selection's chunks one by one to name the first that fails."""
        first = selection[0] if isinstance(selection, tuple) and selection else selection
        start, stop = 0, self.array.shape[0]
        if isinstance(first, slice):
            start, stop, _ = first.indices(stop)
        elif isinstance(first, (int, np.integer)):
            start = int(first) % stop
            stop = start + 1
        size = self.array.chunks[0]
        for index in range(start // size, -(-stop // size)):
            try:
                self.array[index * size : (index + 1) * size]
            except Exception as exc:
                return self._undecodable(index, exc)
        return self._damaged(f"video {self.video_id!r}, array {self.group}/{self.video_id}: read failed ({cause})")


class ChunkReader:
    """Whole chunks of a sharded array read straight from its shard files: each shard's index read
    once (its CRC32C checked), then per chunk one byte range, its CRC32C checked and its codec
    (JPEG strip, or zstd or blosc over little-endian bytes) decoded, with no event loop, task or
    buffer machinery in between. For the layouts this pipeline writes (pipeline/storage/codecs.py);
    `of` gives None for any other, which zarr then reads."""

    def __init__(self, array: zarr.Array, sharding: ShardingCodec, decode) -> None:
        self.array, self.decode = array, decode
        self.chunk_frames = array.chunks[0]
        self.per_shard = array.shards[0] // self.chunk_frames
        self.at_end = sharding.index_location == ShardingCodecIndexLocation.end
        self._indexes: dict[int, tuple[str, np.ndarray]] = {}
        store = array.store
        self._root = Path(store.root) if type(store).__name__ == "LocalStore" else None

    @classmethod
    def of(cls, array: zarr.Array) -> ChunkReader | None:
        sharding = array.metadata.codecs[0] if len(array.metadata.codecs) == 1 else None
        if not isinstance(sharding, ShardingCodec) or [c.to_dict() for c in sharding.index_codecs] != INDEX_CODECS:
            return None
        if array.shards is None or array.chunks[1:] != array.shape[1:]:
            return None
        names = [c.to_dict()["name"] for c in sharding.codecs]
        shape, dtype = array.chunks, np.dtype(array.dtype).newbyteorder("<")
        if names == [codecs.CODEC_NAME, "crc32c"]:
            image = sharding.codecs[0]

            def decode(data: bytes) -> np.ndarray:
                return image.frames(image._decode_image(data), shape)
        elif names in (["bytes", "zstd", "crc32c"], ["bytes", "blosc", "crc32c"]):
            import numcodecs

            decompress = numcodecs.Zstd().decode if names[1] == "zstd" else numcodecs.Blosc().decode

            def decode(data: bytes) -> np.ndarray:
                return np.frombuffer(decompress(data), dtype).reshape(shape)
        else:
            return None
        return cls(array, sharding, decode)

    def _read(self, key: str, start: int, length: int | None) -> bytes:
        """Bytes [start, start + length) of a file of the array (start < 0 with length None: the last -start)."""
        full = f"{self.array.path}/{key}" if self.array.path else key
        if self._root is not None:
            with open(self._root / full, "rb") as file:
                file.seek(start, os.SEEK_END if start < 0 else os.SEEK_SET)
                return file.read() if length is None else file.read(length)
        request = SuffixByteRequest(-start) if start < 0 else RangeByteRequest(start, start + length)
        return sync(self.array.store.get(full, default_buffer_prototype(), byte_range=request)).to_bytes()

    def _index(self, shard: int) -> tuple[str, np.ndarray]:
        if shard not in self._indexes:
            key = self.array.metadata.encode_chunk_key((shard,) + (0,) * (self.array.ndim - 1))
            size = 16 * self.per_shard + 4
            raw = self._read(key, -size if self.at_end else 0, None if self.at_end else size)
            if len(raw) != size or google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
                raise ValueError(f"shard file {key}: its index fails its checksum (truncated or overwritten)")
            self._indexes[shard] = (key, np.frombuffer(raw[:-4], "<u8").reshape(self.per_shard, 2))
        return self._indexes[shard]

    def chunk(self, index: int) -> np.ndarray:
        """Chunk `index` (of `chunk_frames` frames; an edge chunk holds fill values past the end)."""
        key, table = self._index(index // self.per_shard)
        offset, length = (int(x) for x in table[index % self.per_shard])
        if offset == EMPTY_CHUNK:
            return np.full(self.array.chunks, self.array.fill_value, self.array.dtype)
        data = self._read(key, offset, length)
        if len(data) != length:
            raise ValueError(f"chunk {index}: shard file {key} ends before its bytes {offset}-{offset + length}")
        return self.unpack(data, f"chunk {index} (bytes {offset}-{offset + length} of shard file {key})")

    def unpack(self, data: bytes, where: str) -> np.ndarray:
        """A chunk's stored bytes, its CRC32C checked, decoded (`where` names it in the error)."""
        if google_crc32c.value(data[:-4]) != int.from_bytes(data[-4:], "little"):
            raise ValueError(f"{where} fails its checksum")
        return self.decode(data[:-4])
