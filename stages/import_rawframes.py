"""import-rawframes (`python cli.py import-rawframes ROOT`): an mmaction2 / denseflow rawframes tree
into the store, as decode and extract-flow would have written it, so sample, train and evaluate run
on it unchanged.

    <store>/frames/<video_id>            the frames, at decode.short_side, stored with decode.codec
    <store>/flow/<method>/<video_id>     with flow images and a bound: the flow, marked imported
    <decode out>/decoded.parquet, failures.parquet
    <flow out>/videos.parquet, stats.parquet, failures.parquet

A folder that cannot be imported goes to failures.parquet with its reason (pipeline/interop/rawframes.py
reads the images); the rest go through. A re-run skips arrays whose fingerprint (the files' bytes and
the params) is unchanged and that are not damaged. The store must be this pipeline's, or a new folder
(pipeline/storage/ownership.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from pipeline.flow.stats import flow_stats, stats_rows
from pipeline.interop import rawframes
from pipeline.interop.rawframes import ImportProblem
from pipeline.io import scan
from pipeline.io.decode import output_size
from pipeline.parallel import map_progress
from pipeline.storage import arrays, codecs, ownership
from pipeline.storage import store as stores
from pipeline.storage.tables import FileSet, sweep, write_table
from schemas import store as layout
from schemas.params import DecodeParams, FlowParams
from schemas.tables import DECODED, FAILURES, FLOW_STATS, FLOWED, STORE_ARRAYS
from stages.common import (
    Summary,
    decoded,
    failure,
    flow_listing,
    fingerprint,
    frames_fingerprint,
    listed_arrays,
    log_failure,
    protected_folders,
)

STAGE = "import"


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
    lease: str | None = None  # the run's lease on a store at a URL (pipeline/storage/locks.py)

    @property
    def max_pixels(self) -> int:
        return rawframes.max_pixels(self.decode.memory_mb)


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
        frame_paths, pairs, digest = rawframes.list_rawframes(Path(task.root) / task.relpath, task.files, task.bound, task.max_pixels)
        frames_key = frames_fingerprint(digest, d, layout.STORE_VERSION)
        flow_key = None
        if pairs is not None:
            flow_key = fingerprint(frames_key, "imported", task.bound, f.precision, f.chunk_frames, f.shard_frames,
                                   f.moving_threshold, layout.STORE_VERSION)  # fmt: skip
        frames_meta = _sound_meta(task, layout.FRAMES_GROUP, video_id, frames_key)
        flow_meta = _sound_meta(task, group, video_id, flow_key) if flow_key else {}
        written = frames_meta is None or flow_meta is None
        if written:
            source = rawframes.check_headers(frame_paths, pairs, task.max_pixels)
            shape, stats = _write_video(task, video_id, frame_paths, pairs, source, digest, frames_key, flow_key)
        else:  # both arrays as this import would write them: their metadata says all the tables need
            shape, source = frames_meta["shape"], tuple(frames_meta["attributes"]["source_size"])  # type: ignore[index]
            stats = flow_meta.get("attributes", {}).get("stats")  # type: ignore[union-attr]
    except ImportProblem as exc:
        hint = f" (decode.memory_mb sets the limit: {rawframes.IMPORT_BYTES_PER_PIXEL} bytes a pixel)" if exc.reason == "too_large" else ""
        return {"video_id": video_id, "relpath": relpath, "reason": exc.reason, "detail": f"{exc}{hint}"}
    row = decoded(video_id, task.relpath, num_frames=shape[0], height=shape[1], width=shape[2], fps=fps, source_frame_step=1.0,
                  scale=shape[2] / source[0])  # fmt: skip
    if flow_key is None:
        return {"video_id": video_id, "decoded": row, "frames_fingerprint": frames_key, "written": written}
    flowed = {"video_id": video_id, "relpath": task.relpath, "array": f"{group}/{video_id}", "method": f.method,
              "num_pairs": shape[0] - 1, "fingerprint": flow_key}  # fmt: skip
    return {"video_id": video_id, "decoded": row, "frames_fingerprint": frames_key, "flowed": flowed, "stats": stats_rows(video_id, stats),
            "written": written}  # fmt: skip


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
    rate = (fps.numerator, fps.denominator)
    attrs = arrays.frames_attrs(video_id=video_id, relpath=task.relpath, sha256=digest, fps=rate, source_fps=rate, source_frame_step=1.0,
                                source_size=source, decoded_size=source, scale=width / source[0],
                                params={**d.recorded(), "imported": True}, ffmpeg="", fingerprint=frames_key)  # fmt: skip
    blocks = rawframes.frame_blocks(frame_paths, (width, height), d.shard_frames, task.max_pixels)
    count = stores.write_frames(task.store, video_id, blocks, height=height, width=width, chunk_frames=d.chunk_frames,
                                shard_frames=d.shard_frames, attrs=attrs, codec=d.codec, quality=d.quality, lease=task.lease)  # fmt: skip
    stats = None
    if pairs is not None:
        stats = _write_flow(task, video_id, pairs, source, (width, height), frames_key, flow_key)  # type: ignore[arg-type]
    return (count, height, width, 3), stats


def _write_flow(task: ImportTask, video_id: str, pairs: list[tuple[Path, Path]], source: tuple[int, int], size: tuple[int, int],
                frames_key: str, key: str) -> dict[str, list[float]]:  # fmt: skip
    """The flow images as a flow array (shard by shard, published whole, as the flow stage writes
    one), marked imported with the images' quantisation step; its stats."""
    f, bound = task.flow, float(task.bound)  # type: ignore[arg-type]
    partial = arrays.create_flow(task.store, f.method, video_id, pairs=len(pairs), height=size[1], width=size[0], precision=f.precision,
                                 chunk_frames=f.chunk_frames, shard_frames=f.shard_frames)  # fmt: skip
    stats: dict[str, list[float]] = {}
    try:
        array = stores.open_partial(partial)
        for start, flow in rawframes.flow_blocks(pairs, bound, source, size, f.shard_frames, task.max_pixels):
            array[start : start + len(flow)] = codecs.stored_flow(flow, f.precision)
            for name, values in flow_stats(flow, f.moving_threshold).items():
                stats.setdefault(name, []).extend(values.tolist())
        step = 2 * bound / 255
        estimator = {"name": "imported", "from": "8-bit flow images (denseflow, mmaction2)", "bound_px": bound, "quantisation_step_px": step}
        stores.publish(task.store, layout.flow_group(f.method), video_id, partial, arrays.flow_attrs(
            video_id=video_id, method=f.method, estimator=estimator, frames_fingerprint=frames_key, fingerprint=key, stats=stats,
            precision=f.precision, quantisation_step=step,
        ), lease=task.lease)  # fmt: skip
    finally:
        stores.discard_partial(partial)
    return stats


def run(root: str | Path, store: str | Path, decode_out: str | Path, flow_out: str | Path, decode: DecodeParams, flow: FlowParams, *,
        bound: float | None, fps: float, follow_symlinks: bool = True, verify: bool = False, scheduler: str | None = None,
        workers: int | None = None) -> Summary:  # fmt: skip
    """Every video folder of the rawframes tree at `root` into the store, with the decode stage's
    tables (and, with flow images and a `bound`, the flow stage's). Symlinks are followed as the
    probe follows them (`follow_symlinks`), and those not followed are listed in the summary."""
    listed = listed_arrays(Path(decode_out) / "decoded.parquet", Path(flow_out) / "videos.parquet")
    with ownership.owning(store, "import-rawframes", protected=protected_folders(root), listed=listed) as owner:
        summary = Summary("import")
        for folder in (decode_out, flow_out) if bound is not None else (decode_out,):
            sweep(folder)  # what a killed run left: its tables' temporary files, a committed set to finish
        tree = rawframes.find_rawframe_folders(root, follow_symlinks=follow_symlinks)
        wanted = {scan.video_id(relpath) for relpath in tree.folders}  # as the decode stage: the store holds what the tree holds
        groups = [layout.FRAMES_GROUP] + ([layout.flow_group(flow.method)] if bound is not None else [])
        if stale := sum(owner.prepare_group(group, wanted) for group in groups):
            summary.add("stale arrays removed", stale)
        tasks = [ImportTask(relpath, names, str(root), str(owner.store), decode, flow, bound, fps, verify, owner.lease)
                 for relpath, names in sorted(tree.folders.items())]  # fmt: skip
        results = sorted(map_progress(import_task, tasks, scheduler=scheduler, workers=workers, desc="import", unit="video"),
                         key=lambda r: r["video_id"])  # fmt: skip
        failures = [failure(STAGE, r["video_id"], r["relpath"], r["reason"], r["detail"]) for r in results if "reason" in r]
        for row in failures:
            log_failure(row)
            for group in groups:  # an array left from before, or written before a later image failed, is not this tree's
                stores.remove_array(owner.store, group, row["video_id"])
        _write_tables(results, failures, decode, flow, bound, Path(decode_out), Path(flow_out), store, root)
        summary.add("videos", sum(1 for r in results if "decoded" in r))
        summary.add("unchanged", sum(1 for r in results if r.get("written") is False))
        summary.add("with flow", sum(1 for r in results if "flowed" in r))
        if failures:
            summary.add("failed", len(failures))
            summary.notes += [f"{row['relpath']}: {row['reason']}: {row['detail']}" for row in failures[:5]]
        summary.notes += [f"skipped {relpath}: {why}" for relpath, why in tree.skipped] + owner.notes
        return summary


def _write_tables(results: list[dict], failures: list[dict], decode: DecodeParams, flow: FlowParams, bound: float | None,
                  decode_out: Path, flow_out: Path, store: str | Path, root: str | Path) -> None:  # fmt: skip
    """decode's tables, and with flow the flow stage's, each folder's set replaced together."""
    metadata = {"params": decode.model_dump(mode="json"), "store": Path(store).name, "imported_from": str(root)}
    frames = [{"array": r["decoded"]["array"], "fingerprint": r["frames_fingerprint"], "num_frames": r["decoded"]["num_frames"]}
              for r in results if "decoded" in r]  # fmt: skip
    with FileSet(decode_out) as files:
        write_table(decode_out / "decoded.parquet", [r["decoded"] for r in results if "decoded" in r], DECODED, metadata=metadata,
                    files=files)  # fmt: skip
        write_table(decode_out / "failures.parquet", failures, FAILURES, metadata=metadata, files=files)
        write_table(decode_out / "arrays.parquet", frames, STORE_ARRAYS, metadata=metadata, files=files)
    if bound is None:
        return
    flow_meta = {"method": flow.method, "params": {"imported": True, "bound": bound}, "moving_threshold": flow.moving_threshold}
    with FileSet(flow_out) as files:
        write_table(flow_out / "videos.parquet", [r["flowed"] for r in results if "flowed" in r], FLOWED, metadata=flow_meta,
                    files=files)  # fmt: skip
        write_table(flow_out / "stats.parquet", [row for r in results for row in r.get("stats", [])], FLOW_STATS, metadata=flow_meta,
                    files=files)  # fmt: skip
        write_table(flow_out / "failures.parquet", [], FAILURES, metadata=flow_meta, files=files)
        write_table(flow_out / "arrays.parquet", flow_listing([r["flowed"] for r in results if "flowed" in r]), STORE_ARRAYS,
                    metadata=flow_meta, files=files)  # fmt: skip
