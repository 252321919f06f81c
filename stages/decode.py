"""decode stage: every usable video of the manifest into a (T, H, W, 3) uint8 RGB Zarr array.

    <store>/frames/<video_id>   the frames (layout: schemas/store.py)
    <out>/decoded.parquet       one row per array (schemas.tables.DECODED)
    <out>/failures.parquet      videos that did not decode, with the reason
    <out>/arrays.parquet        the arrays it owns and their fingerprints: what DVC tracks of the store

The videos root and the store may each be a folder or an fsspec URL (s3://...; docs/cluster.md).

Atomic and resumable per video: an array appears only when complete, and a re-run skips arrays
whose fingerprint (source hash + decode params) matches, redoing the rest. Arrays of videos no
longer in the manifest are removed, so the store always matches the manifest and params.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

from pipeline.io import sources
from pipeline.io.decode import (
    DecodeError,
    DecodeSpec,
    TooLarge,
    iter_frame_blocks,
    output_size,
    read_plan,
    stored_frame_count,
)
from pipeline.io.ffmpeg_binary import ffmpeg_binary
from pipeline.io.probe import decoded_size
from pipeline.parallel import map_progress
from pipeline.storage import arrays, faults, ownership, store
from pipeline.storage.tables import FileSet, read_table, sweep, write_table
from schemas import store as layout
from schemas.params import DecodeParams
from schemas.tables import DECODED, FAILURES, STORE_ARRAYS, VIDEOS
from stages.common import Summary, decoded, failure, frames_fingerprint, listed_arrays, log_failure, protected_folders

STAGE = "decode"


@dataclass(frozen=True)
class DecodeItem:
    video: dict[str, Any]  # the manifest row
    path: str  # the source: its absolute path, or its URL under a URL videos root (pipeline/io/sources.py)
    spec: DecodeSpec
    params: DecodeParams
    store: str
    fingerprint: str
    expected_frames: int
    verify: bool = False  # read every chunk of a finished array before skipping it
    lease: str | None = None  # the run's lease on a store at a URL (pipeline/storage/locks.py)


def plan_item(row: dict[str, Any], videos_root: str | Path, params: DecodeParams, store_path: str) -> DecodeItem:
    width, height = output_size(row["display_width"], row["display_height"], params.short_side)
    spec = DecodeSpec(
        width=width, height=height, fps=params.fps_fraction(), frame_stride=params.frame_stride,
        max_frames=params.max_frames, timeout_s=params.timeout_s,
    )  # fmt: skip
    source_fps = Fraction(row["fps_num"], row["fps_den"])
    return DecodeItem(
        video=row,
        path=sources.join(videos_root, row["relpath"]),
        spec=spec,
        params=params,
        store=store_path,
        # Only what changes the pixels: the source content and the params (not paths, not versions).
        fingerprint=frames_fingerprint(row["sha256"], params, layout.STORE_VERSION),
        expected_frames=stored_frame_count(row["num_frames"], source_fps, spec),
    )


def _stored_fps(row: dict[str, Any], spec: DecodeSpec) -> Fraction:
    source = Fraction(row["fps_num"], row["fps_den"])
    return spec.fps if spec.fps is not None else source / spec.frame_stride


def _scale(row: dict[str, Any], spec: DecodeSpec) -> float:
    """Stored short side / source short side (both sides scale alike, up to rounding)."""
    return min(spec.width, spec.height) / min(row["display_width"], row["display_height"])


def decoded_row(item: DecodeItem, num_frames: int) -> dict[str, Any]:
    row, spec = item.video, item.spec
    fps = _stored_fps(row, spec)
    return decoded(row["video_id"], row["relpath"], num_frames=num_frames, height=spec.height, width=spec.width, fps=fps,
                   source_frame_step=float(Fraction(row["fps_num"], row["fps_den"]) / fps), scale=_scale(row, spec))  # fmt: skip


def decode_one(item: DecodeItem) -> tuple[str, dict[str, Any]]:
    """("skipped" | "decoded", decoded row) or ("failed", failure row)."""
    row = item.video
    existing = store.array_attrs(item.store, layout.FRAMES_GROUP, row["video_id"])
    status = "decoded"
    if existing and existing.get("fingerprint") == item.fingerprint:
        if not store.damage(item.store, layout.FRAMES_GROUP, row["video_id"], verify=item.verify):
            return "skipped", decoded_row(item, existing["num_frames"])
        status = "damaged, decoded again"
    spec = item.spec
    stored = decoded_row(item, 0)  # rate, step and scale, as the decode table will show them
    source_width, source_height = decoded_size(row["width"], row["height"], row["rotation"])
    attrs = arrays.frames_attrs(
        video_id=row["video_id"], relpath=row["relpath"], sha256=row["sha256"], fps=(stored["fps_num"], stored["fps_den"]),
        source_fps=(row["fps_num"], row["fps_den"]), source_frame_step=stored["source_frame_step"],
        source_size=(row["display_width"], row["display_height"]), scale=stored["scale"], params=item.params.recorded(),
        ffmpeg=ffmpeg_binary().version, fingerprint=item.fingerprint,
        decoded_size=(source_width, source_height),  # what FFmpeg decodes to: lets flow decode the source again
    )  # fmt: skip
    read = [item.path, f"file:{item.path}"]  # what FFmpeg read, as its messages may show it
    try:
        plan = read_plan(spec.width * spec.height * 3, item.params.shard_frames, item.params.memory_mb * 2**20)
        with sources.opened_source(item.path, expires_s=spec.timeout_s) as source:  # a signed URL or a copy, for a URL root
            read.append(source)
            blocks = iter_frame_blocks(source, spec, source_width=source_width, source_height=source_height, plan=plan)
            count = store.write_frames(
                item.store, row["video_id"], blocks,
                height=spec.height, width=spec.width, chunk_frames=item.params.chunk_frames,
                shard_frames=item.params.shard_frames, attrs=attrs, codec=item.params.codec, quality=item.params.quality,
                lease=item.lease,
            )  # fmt: skip
    except DecodeError as exc:
        # Name the file by its relative path: the table must not depend on where the videos live, nor
        # show a signed URL.
        detail = sources.named(str(exc), row["relpath"], read)
        if not isinstance(exc, TooLarge):
            return "failed", failure(STAGE, row["video_id"], row["relpath"], "decode_error", detail)
        fix = ("set decode.short_side (e.g. 128), lower decode.shard_frames, or raise decode.memory_mb to "
               f"{exc.needed_mib:,} if the machine has it") if exc.needed_mib else "lower decode.memory_mb, or set decode.short_side"
        return "failed", failure(STAGE, row["video_id"], row["relpath"], "too_large", f"{detail}: {fix}")
    except MemoryError:  # writing: the machine has less than decode.memory_mb says
        return "failed", failure(STAGE, row["video_id"], row["relpath"], "too_large", f"out of memory writing its frames "
                                 f"({spec.width}x{spec.height}): lower decode.memory_mb or set decode.short_side")  # fmt: skip
    except OSError as exc:
        if faults.is_environment(exc, (item.store,)):  # the store's disk, not the video: stop the stage
            raise faults.fault(exc, row["relpath"], item.store, needed=item.expected_frames * spec.height * spec.width * 3) from None
        detail = sources.named(f"{exc.strerror or exc}", row["relpath"], read)  # a URL root's errors may name the object
        return "failed", failure(STAGE, row["video_id"], row["relpath"], "unreadable", detail)
    return status, decoded_row(item, count)


def run(
    params: DecodeParams,
    manifest: str | Path,
    videos_root: str | Path,
    store_path: str | Path,
    out: str | Path,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    verify: bool = False,
) -> Summary:
    """Decode every video of the manifest into the store. A finished array whose fingerprint matches
    is skipped unless it is damaged (metadata, a shard file or its index; with `verify`, any chunk).
    The store must be this pipeline's, or a new folder (pipeline/storage/ownership.py)."""
    listed = listed_arrays(Path(out) / "decoded.parquet")
    with ownership.owning(store_path, "decode", protected=protected_folders(videos_root), listed=listed) as owner:
        return _decode_all(owner, params, manifest, videos_root, str(store_path), out, scheduler, workers, verify)


def _decode_all(owner: ownership.Owner, params: DecodeParams, manifest: str | Path, videos_root: str | Path, store_name: str,
                out: str | Path, scheduler: str | None, workers: int | None, verify: bool) -> Summary:  # fmt: skip
    summary = Summary("decode")
    videos = read_table(Path(manifest) / "videos.parquet", VIDEOS).to_pylist()
    store_path, out = str(owner.store), Path(out)
    sweep(out)  # what a killed run left: its tables' temporary files, a committed set to finish
    if stale := owner.prepare_group(layout.FRAMES_GROUP, {row["video_id"] for row in videos}):
        summary.add("stale arrays removed", stale)
    items = [replace(plan_item(row, videos_root, params, store_path), verify=verify, lease=owner.lease) for row in videos]
    rows, failures = [], []
    results = map_progress(
        decode_one, items, scheduler=scheduler, workers=workers, desc="decode", unit="frame",
        weight=lambda item: item.expected_frames,
    )  # fmt: skip
    for status, row in results:
        summary.add(status)
        if status == "failed":
            log_failure(row)
            failures.append(row)
            store.remove_array(store_path, layout.FRAMES_GROUP, row["video_id"])  # an old array would be stale
        else:
            rows.append(row)
    rows.sort(key=lambda row: row["video_id"])
    failures.sort(key=lambda row: row["video_id"])
    metadata = {"params": params.model_dump(mode="json"), "store": store_name}
    keys = {item.video["video_id"]: item.fingerprint for item in items}
    listing = [{"array": row["array"], "fingerprint": keys[row["video_id"]], "num_frames": row["num_frames"]} for row in rows]
    with FileSet(out) as files:  # the tables replaced together, or none
        write_table(out / "decoded.parquet", rows, DECODED, metadata=metadata, files=files)
        write_table(out / "failures.parquet", failures, FAILURES, metadata=metadata, files=files)
        write_table(out / "arrays.parquet", listing, STORE_ARRAYS, metadata=metadata, files=files)
    summary.add("frames stored", sum(row["num_frames"] for row in rows))
    expected = {item.video["video_id"]: item.expected_frames for item in items}
    off = [row for row in rows if row["num_frames"] != expected[row["video_id"]]]
    for row in off[:10]:
        summary.notes.append(
            f"{row['relpath']}: {row['num_frames']} frames stored, {expected[row['video_id']]} expected from the probe"
        )
    summary.notes += owner.notes
    return summary
