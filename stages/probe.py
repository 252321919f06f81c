"""probe stage: scan the videos root and write the manifest of usable videos, and the failures.

    <out>/videos.parquet     one row per usable video (schemas.tables.VIDEOS)
    <out>/failures.parquet   one row per video that cannot be used, with the reason

Each video is hashed and decoded once (to count frames exactly and catch corrupt streams), in
parallel with dask. A re-run reuses the previous manifest's rows for files whose content hash and
probe params are unchanged, so adding ten videos to a folder of ten thousand probes ten.

The videos root may be an fsspec URL (s3://bucket/videos; pipeline/io/sources.py): each object is
read once, copied to a temporary file while hashed, and probed there. The manifest's metadata records
each usable object's version (its ETag) under "source_versions", so a re-run reuses the row of an
object whose size and version are unchanged without reading it again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.io import sources
from pipeline.io.ffmpeg_binary import ffmpeg_binary
from pipeline.io.probe import ProbeError, probe_video
from pipeline.io.scan import FoundVideo, scan_videos, shown
from pipeline.parallel import map_progress
from pipeline.storage.tables import FileSet, read_table, sweep, table_metadata, write_table
from schemas.params import ProbeParams
from schemas.tables import FAILURES, TABLES_VERSION, VIDEOS
from stages.common import Summary, failure, fingerprint, log_failure

STAGE = "probe"


@dataclass(frozen=True)
class ProbeItem:
    video: FoundVideo
    params: ProbeParams
    cached: dict[str, Any] | None  # the previous run's row for this relpath, if any
    cached_version: str | None = None  # and the version its object had (URL roots only)


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def probe_one(item: ProbeItem) -> tuple[str, dict[str, Any]]:
    """("probed" or "reused", manifest row) or ("failed", failure row). Never raises for a bad video."""
    video = item.video

    def fail(reason: str, detail: str) -> tuple[str, dict[str, Any]]:
        return "failed", failure(STAGE, video.video_id, shown(video.relpath), reason, detail)

    if shown(video.relpath) != video.relpath:  # bytes that are not UTF-8: no table can hold the name
        return fail("bad_name", "its path is not valid UTF-8, which tables cannot hold: rename it (convmv does it for a whole "
                                "tree) and probe again")  # fmt: skip
    if video.version is not None:  # an object under a URL root
        if item.cached and item.cached_version == video.version and item.cached["size_bytes"] == video.size:
            return "reused", item.cached  # unchanged since the last run: not read again
        try:
            with sources.local_copy(str(video.path)) as (copy, digest):
                return _probe_file(item, copy, copy.stat().st_size, digest)
        except OSError as exc:
            return fail("unreadable", f"cannot read the object: {sources.named(str(exc), video.relpath, [str(video.path)])}")
    try:
        size = video.path.stat().st_size
        digest = file_sha256(video.path) if size else ""
    except OSError as exc:
        return fail("unreadable", f"cannot read the file: {exc.strerror or exc}")
    return _probe_file(item, video.path, size, digest)


def _probe_file(item: ProbeItem, path: Path, size: int, digest: str) -> tuple[str, dict[str, Any]]:
    """probe_one for the local file `path` holding the video, of this size and sha256."""
    video = item.video
    if item.cached and item.cached["sha256"] == digest and item.cached["size_bytes"] == size:
        return "reused", item.cached
    try:
        info = probe_video(path, timeout_s=item.params.timeout_s, min_frames=item.params.min_frames)
    except ProbeError as exc:
        return "failed", failure(STAGE, video.video_id, video.relpath, exc.reason, exc.detail)
    header = info.header
    return "probed", {
        "video_id": video.video_id,
        "relpath": video.relpath,
        "size_bytes": size,
        "sha256": digest,
        "container": header.container,
        "codec": header.codec,
        "width": header.width,
        "height": header.height,
        "display_width": info.display_width,
        "display_height": info.display_height,
        "sar_num": info.sar.numerator,
        "sar_den": info.sar.denominator,
        "pix_fmt": header.pix_fmt,
        "fps_num": info.fps.numerator,
        "fps_den": info.fps.denominator,
        "fps": float(info.fps),
        "num_frames": info.num_frames,
        "duration_s": round(info.duration_s, 6),
        "rotation": header.rotation,
        "is_vfr": info.is_vfr,
        "status": "degraded" if info.errors else "ok",
        "warnings": "; ".join(info.errors),
    }


def _previous_rows(out: Path, params_key: str) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Rows of the last manifest, by relpath, if it was made with the same params and table version,
    and the versions of their objects (URL roots)."""
    path = out / "videos.parquet"
    if not path.exists():
        return {}, {}
    try:
        meta = table_metadata(path)
        if meta.get("probe_key") != params_key:
            return {}, {}
        return {row["relpath"]: row for row in read_table(path, VIDEOS).to_pylist()}, dict(meta.get("source_versions", {}))
    except (OSError, ValueError, KeyError, TypeError):
        return {}, {}  # an unreadable old manifest is simply not reused


def run(
    params: ProbeParams, videos_root: str | Path, out: str | Path, *, scheduler: str | None = None, workers: int | None = None
) -> Summary:
    videos_root, out = (str(videos_root) if sources.is_url(videos_root) else Path(videos_root)), Path(out)
    summary = Summary("probe")
    sweep(out)  # what a killed run left: its tables' temporary files, a committed set to finish
    scan = scan_videos(videos_root, params.extensions, follow_symlinks=params.follow_symlinks)
    for rel, why in scan.skipped:
        summary.notes.append(f"skipped {rel}: {why}")
    ids = [v.video_id for v in scan.videos]
    if len(set(ids)) != len(ids):
        raise RuntimeError("two videos got the same id; please report this with the file names")  # hash collision
    params_key = fingerprint(params, TABLES_VERSION)
    previous, versions = _previous_rows(out, params_key)
    items = [ProbeItem(video, params, previous.get(video.relpath), versions.get(video.relpath)) for video in scan.videos]
    rows, failures, reused = [], [], 0
    for status, row in map_progress(probe_one, items, scheduler=scheduler, workers=workers, desc="probe", unit="video"):
        (failures if status == "failed" else rows).append(row)
        reused += status == "reused"
        if status == "failed":
            log_failure(row)
    rows.sort(key=lambda row: row["relpath"])
    failures.sort(key=lambda row: row["relpath"])
    metadata = {
        "params": params.model_dump(mode="json"),
        "probe_key": params_key,
        "videos_root": sources.redact(str(videos_root)),
        "ffmpeg": ffmpeg_binary().version,
    }
    if sources.is_url(videos_root):
        usable = {row["relpath"] for row in rows}
        metadata["source_versions"] = {v.relpath: v.version for v in scan.videos if v.relpath in usable}
    with FileSet(out) as files:  # both tables replaced together, or neither
        write_table(out / "videos.parquet", rows, VIDEOS, metadata=metadata, files=files)
        write_table(out / "failures.parquet", failures, FAILURES, metadata=metadata, files=files)
    summary.add("videos found", len(items))
    summary.add("usable", len(rows))
    summary.add("degraded", sum(row["status"] == "degraded" for row in rows))
    summary.add("failed", len(failures))
    summary.add("reused from the last run", reused)
    summary.add("frames", sum(row["num_frames"] for row in rows))
    if failures:
        summary.notes.append(f"failures and their reasons: {out / 'failures.parquet'}")
    return summary
