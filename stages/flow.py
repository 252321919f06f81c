"""flow stage (`python cli.py extract-flow`): optical flow of every decoded video into the store.

    <store>/flow/<method>/<video_id>   (T-1, H, W, 2) float16, flow[i]: frame i -> i+1 (schemas/store.py)
    <out>/videos.parquet               one row per flow array (schemas.tables.FLOWED)
    <out>/stats.parquet                per-pair statistics (schemas.tables.FLOW_STATS), also kept in each
                                       array's attributes
    <out>/failures.parquet             videos without flow, and why
    <out>/arrays.parquet               the arrays it owns and their fingerprints: what DVC tracks of the store

Work is cut into tasks of at most `flow.pairs_per_task` frame pairs (one per short video, several
per long one), run in parallel with dask, one OpenCV/torch thread per worker; a video whose frames
are stored lossy is decoded again from its source in one task, which runs the same pieces in one
pass of the decoder. Each task writes whole shards of a video's array (under `<store>.partial/`, or
in place at a URL); this process publishes the array when all its tasks are done (pipeline/storage/
store.py), so a killed run never leaves a partial array that looks finished, and a re-run skips
videos whose flow fingerprint (frames + method + params) is unchanged.
"""

from __future__ import annotations

import functools
import json
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from pipeline.flow.estimators import (
    DIS,
    RAFT,
    TVL1,
    DISConfig,
    Farneback,
    FarnebackConfig,
    FlowError,
    FlowEstimator,
    RAFTConfig,
    RaftWeightsMissing,
    TVL1Config,
)
from pipeline.flow.stats import STAT_NAMES, flow_stats, stats_rows
from pipeline.io.decode import DecodeError, DecodeSpec, iter_frame_blocks
from pipeline.io.sources import join, named, opened_source
from pipeline.parallel import map_progress
from pipeline.storage import arrays, codecs, faults, ownership, store
from pipeline.storage.tables import FileSet, read_table, sweep, write_table
from schemas import store as layout
from schemas.params import DecodeParams, FlowParams
from schemas.tables import DECODED, FAILURES, FLOW_STATS, FLOWED, STORE_ARRAYS
from stages.common import (
    Summary,
    failure,
    fingerprint,
    flow_listing,
    frames_fingerprint,
    listed_arrays,
    log,
    log_failure,
    protected_folders,
)

STAGE = "flow"


def method_params(params: FlowParams) -> dict[str, Any]:
    """The parameters of the chosen method only (changing another method's leaves this flow valid)."""
    return getattr(params, params.method).model_dump(mode="json", by_alias=True)


def make_estimator(params: FlowParams) -> FlowEstimator:
    method = params.method
    if method in ("tvl1", "tvl1_fast"):
        estimator = TVL1(TVL1Config(**getattr(params, method).model_dump()))
        estimator.name = method
        return estimator
    if method == "dis":
        return DIS(DISConfig(**params.dis.model_dump()))
    if method == "farneback":
        return Farneback(FarnebackConfig(**params.farneback.model_dump()))
    try:
        return RAFT(RAFTConfig(size=method.removeprefix("raft_"), **getattr(params, method).model_dump()))
    except RaftWeightsMissing as exc:
        raise RaftWeightsMissing(f"{exc} (flow.{method}.weights in params.yaml)") from None


_RAFT: dict[str, FlowEstimator] = {}  # per worker process: build each RAFT (it loads weights) once


def _estimator(params: FlowParams) -> FlowEstimator:
    """The estimator for a task, one thread. OpenCV's are built afresh for each task: DIS and TV-L1
    keep state between calls when the frame size changes (the same frames gave flow 0.14 px apart
    after another size had been through the same object), so a cached one made a video's flow depend
    on which videos its worker had done before. RAFT holds none and is built once per process."""
    import cv2

    cv2.setNumThreads(1)  # parallelism is across workers
    if not params.method.startswith("raft"):
        return make_estimator(params)
    key = json.dumps([params.method, method_params(params)], sort_keys=True)
    if key not in _RAFT:
        import torch

        torch.set_num_threads(1)
        _RAFT[key] = make_estimator(params)
    return _RAFT[key]


@dataclass(frozen=True)
class Source:
    """Where to decode a video's frames again, exactly as the decode stage did, when the store
    holds them lossy: flow is computed from the decoder's pixels, not from JPEG's."""

    path: str  # its absolute path, or its URL under a URL videos root (pipeline/io/sources.py)
    spec: DecodeSpec
    decoded_size: tuple[int, int]


@dataclass(frozen=True)
class FlowTask:
    video_id: str
    relpath: str
    store: str
    partial: str  # the array being filled
    start: int  # first pair
    stop: int  # one past the last pair
    params: FlowParams
    source: Source | None = None  # lossy-stored frames: decode these instead


def task_windows(task: FlowTask) -> Iterator[tuple[int, np.ndarray]]:
    """(first pair, frames) of each run of at most `pairs_per_task` pairs of the task, the estimator
    starting afresh on each: one run, read from the store; or, decoded again from the source video
    (lossy-stored frames), every run of the video in one pass of the decoder, so a long video is
    decoded once, not once per run."""
    if task.source is None:
        yield task.start, store.open_frames(task.store, task.video_id)[task.start : task.stop + 1]
        return
    step = task.params.pairs_per_task
    pending, first, seen = [], task.start, 0  # frames of the run being gathered, from frame `first`
    for block in _source_blocks(task.source, task.relpath):
        pending.append(block[max(first - seen, 0) : task.stop + 1 - seen])
        seen += len(block)
        while seen > min(first + step, task.stop) and first < task.stop:
            frames = np.concatenate(pending)
            end = min(first + step, task.stop)
            yield first, frames[: end + 1 - first]
            pending, first = [frames[end - first :]], end  # the run's last frame is the next one's first
        if first >= task.stop:
            return
    raise DecodeError(f"{task.relpath}: decoding it again gave {seen} frames, fewer than the store's; re-run the decode stage")


def _source_blocks(source: Source, relpath: str) -> Iterator[np.ndarray]:
    """The source's frames, decoded as the decode stage did; errors name the video by its relpath,
    never by where the videos live or a signed URL."""
    width, height = source.decoded_size
    with opened_source(source.path, expires_s=source.spec.timeout_s) as ffmpeg_input:
        try:
            yield from iter_frame_blocks(ffmpeg_input, source.spec, source_width=width, source_height=height)
        except DecodeError as exc:
            raise DecodeError(named(str(exc), relpath, [ffmpeg_input, source.path])) from None


def flow_task(task: FlowTask, windows: Future | None = None, estimator: FlowEstimator | None = None) -> dict[str, Any]:
    """Flow for pairs [start, stop) of one video, written into its partial array; returns the stats.
    Frames the estimator cannot use give {"error": message} instead of raising. `windows`: the
    task's `task_windows`, read ahead (a future of their list); `estimator`: this process's own."""
    flat, stats = 0, {name: [] for name in STAT_NAMES}
    try:
        for start, frames in task_windows(task) if windows is None else windows.result():
            flat += int((np.ptp(frames.reshape(len(frames), -1), axis=1) == 0).sum())
            flow = (estimator or _estimator(task.params)).estimate(np.asarray(frames))
            if not np.isfinite(flow).all():
                return {"task": task, "error": "the estimator returned NaN or infinite flow"}
            store.open_partial(task.partial)[start : start + len(flow)] = codecs.stored_flow(flow, task.params.precision)
            for name, values in flow_stats(flow, task.params.moving_threshold).items():
                stats[name].extend(values.tolist())
    except (store.CorruptChunkError, DecodeError, FlowError) as exc:
        return {"task": task, "error": str(exc)}
    except OSError as exc:  # reads fail as CorruptChunkError: this is a write into the partial array
        if faults.is_environment(exc, (task.store,)):
            raise faults.fault(exc, task.relpath, task.partial, needed=_task_bytes(task)) from None
        raise
    return {"task": task, "flat_frames": flat, "stats": stats}


def _windows(task: FlowTask) -> list[tuple[int, np.ndarray]]:
    return list(task_windows(task))


def _owns_the_device(estimator: FlowEstimator | None, scheduler: str | None) -> bool:
    """Whether this process runs every task's estimate itself: a model on a GPU (RAFT on CUDA), with
    the local scheduler. One process then holds the one CUDA context and sends full batches, where
    a worker per core would each hold a context, its own copy of the model and a share of the
    batches; the workers' part (reading and decoding the frames) runs in threads ahead of it. An
    existing cluster (`--scheduler tcp://...`) keeps its own placement: a worker per GPU there."""
    device = getattr(estimator, "device", None)
    return device is not None and device.type == "cuda" and scheduler in (None, "", "local")


def _task_bytes(task: FlowTask) -> int | None:
    """What a task's flow takes uncompressed (an upper bound of what it writes)."""
    shape = store.partial_shape(task.partial)
    return None if not shape else (task.stop - task.start) * shape[1] * shape[2] * 2 * 2


def _discarding_on_fault(results: Iterator[dict[str, Any]], pending: dict[str, _Video]) -> Iterator[dict[str, Any]]:
    """The results; if the machine fails the run (a full disk), first drop this run's partial arrays."""
    try:
        yield from results
    except faults.EnvironmentFault:
        for video in pending.values():
            store.discard_partial(video.partial)
        raise


@dataclass
class _Video:
    """A video whose flow is being computed: what its tasks have returned so far."""

    row: dict[str, Any]
    done: dict[str, Any]  # its row of videos.parquet
    partial: str
    frames_fingerprint: str
    left: int  # tasks not yet returned
    stats: dict[int, dict[str, list[float]]] = field(default_factory=dict)  # by task start
    flat: int = 0
    error: str | None = None


def run(
    params: FlowParams,
    decoded: str | Path,
    store_path: str | Path,
    out: str | Path,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    videos_root: str | Path | None = None,
    verify: bool = False,
) -> Summary:
    """Flow of every decoded video. Frames stored lossy (decode.codec jpeg, ...) are decoded again
    from the source under `videos_root`, so the flow is the same as from lossless frames (and keeps
    its fingerprint across frame codecs); without `videos_root` it comes from the stored frames.
    A finished flow array is computed again if damaged (metadata, a shard file or its index; with
    `verify`, any chunk), even where its fingerprint matches. The store must be this pipeline's."""
    listed = listed_arrays(Path(decoded) / "decoded.parquet", Path(out) / "videos.parquet")
    with ownership.owning(store_path, "extract-flow", protected=protected_folders(videos_root), listed=listed) as owner:
        return _flow_all(owner, params, decoded, out, scheduler, workers, videos_root, verify)


@dataclass
class _Outcome:
    """What the run has found so far: the tables' rows and the summary."""

    store_path: str
    group: str
    summary: Summary
    lease: str | None = None  # the run's lease on a store at a URL
    done_rows: list[dict[str, Any]] = field(default_factory=list)
    stat_rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)

    def done(self, row: dict[str, Any], stats: dict[str, list[float]], status: str) -> None:
        self.done_rows.append(row)
        self.stat_rows.extend(stats_rows(row["video_id"], stats))
        self.summary.add(status)

    def fail(self, video_id: str, relpath: str, reason: str, detail: str) -> None:
        store.remove_array(self.store_path, self.group, video_id)  # an old array would no longer match
        self.failures.append(failure(STAGE, video_id, relpath, reason, detail))
        log_failure(self.failures[-1])
        self.summary.add("failed")


@dataclass
class _Plan:
    """What the run will do: videos to compute (their tasks), and flow to re-encode."""

    pending: dict[str, _Video] = field(default_factory=dict)
    tasks: list[FlowTask] = field(default_factory=list)
    recode: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    lossy_from_store: int = 0


def _flow_all(owner: ownership.Owner, params: FlowParams, decoded: str | Path, out: str | Path, scheduler: str | None,
              workers: int | None, videos_root: str | Path | None, verify: bool) -> Summary:  # fmt: skip
    out, group = Path(out), layout.flow_group(params.method)
    outcome = _Outcome(str(owner.store), group, Summary(f"extract-flow ({params.method})"), lease=owner.lease)
    sweep(out)  # what a killed run left: its tables' temporary files, a committed set to finish
    videos = read_table(Path(decoded) / "decoded.parquet", DECODED).to_pylist()
    if stale := owner.prepare_group(group, {row["video_id"] for row in videos}):
        outcome.summary.add("stale arrays removed", stale)
    plan = _plan_all(videos, params, outcome, videos_root, verify)
    _recode_all(plan, params, outcome)
    _compute_all(plan, params, outcome, scheduler, workers)
    _write_tables(out, outcome, params)
    summary = outcome.summary
    summary.add("pairs", sum(r["num_pairs"] for r in outcome.done_rows))
    summary.notes += owner.notes
    if plan.lossy_from_store:
        summary.notes.append(f"{plan.lossy_from_store} videos' frames are stored lossy, and their flow came from those frames: "
                             "give the videos root (data.videos) to compute it from the source videos")  # fmt: skip
    return summary


def _plan_all(videos: list[dict[str, Any]], params: FlowParams, outcome: _Outcome, videos_root: str | Path | None,
              verify: bool) -> _Plan:  # fmt: skip
    """Per video: fail it (frames unusable), skip it (its flow is there, sound and current), re-encode
    it (the same flow stored as float16), or plan its tasks."""
    plan, store_path, group = _Plan(), outcome.store_path, outcome.group
    for row in videos:
        frames_meta = store.array_meta(store_path, layout.FRAMES_GROUP, row["video_id"]) or {}
        frames_attrs = frames_meta.get("attributes", {})
        if problem := _frames_problem(row, frames_meta):
            outcome.fail(row["video_id"], row["relpath"], *problem)
            continue
        source, frames_fp = None, frames_attrs["fingerprint"]
        decode_params = DecodeParams(**frames_attrs.get("params", {}))
        if decode_params.codec != "zstd":
            if videos_root is None:
                plan.lossy_from_store += 1
            else:
                source = _source(row, videos_root, decode_params, frames_attrs)
                frames_fp = frames_fingerprint(frames_attrs["sha256"], decode_params.model_copy(update={"codec": "zstd"}),
                                               frames_attrs["store_version"])  # fmt: skip
        done = {"video_id": row["video_id"], "relpath": row["relpath"], "array": f"{group}/{row['video_id']}",
                "method": params.method, "num_pairs": row["num_frames"] - 1,
                "fingerprint": flow_fingerprint(frames_fp, params)}  # fmt: skip
        existing = store.array_attrs(store_path, group, row["video_id"])
        if existing and (damaged := store.damage(store_path, group, row["video_id"], verify=verify)):
            log.warning("%s: rewriting its flow: %s", row["relpath"], damaged)
            outcome.summary.add("damaged")
            existing = None
        if existing and existing.get("fingerprint") == done["fingerprint"]:
            outcome.done(done, existing["stats"], "skipped")
            continue
        if existing and params.precision is not None and existing.get("fingerprint") == flow_fingerprint(
            frames_fp, params.model_copy(update={"precision": None})
        ):  # the same flow, stored as float16: re-encode it rather than compute it again
            plan.recode.append((row, done, existing))
            continue
        video_tasks = _plan_tasks(row, params, store_path, group, source)
        plan.pending[row["video_id"]] = _Video(row, done, video_tasks[0].partial, frames_fp, len(video_tasks))
        plan.tasks += video_tasks
    return plan


def _recode_all(plan: _Plan, params: FlowParams, outcome: _Outcome) -> None:
    """Float16 flow of the same fingerprint re-encoded at `flow.precision`, none computed again."""
    for row, done, existing in tqdm(plan.recode, desc="extract-flow: re-encode", unit="video", disable=not plan.recode):
        try:
            arrays.recode_flow(outcome.store_path, params.method, row["video_id"], params.precision,
                               {**existing, "fingerprint": done["fingerprint"]}, lease=outcome.lease)  # fmt: skip
        except store.CorruptChunkError as exc:
            outcome.fail(row["video_id"], row["relpath"], "bad_flow", str(exc))
            continue
        outcome.done(done, existing["stats"], "re-encoded")


def _compute_all(plan: _Plan, params: FlowParams, outcome: _Outcome, scheduler: str | None, workers: int | None) -> None:
    """Run the planned tasks in parallel; publish each video's array once all its tasks are back."""
    # Built here first so that a problem (missing RAFT weights) stops the run before any work.
    estimator = make_estimator(params) if plan.tasks else None
    estimator_info = estimator.describe() if estimator else None
    shown = {"desc": "extract-flow", "unit": "pair", "weight": lambda task: task.stop - task.start, "noun": "tasks"}
    if _owns_the_device(estimator, scheduler):  # RAFT on the GPU here; the frames read in threads around it
        results = map_progress(functools.partial(flow_task, estimator=estimator), plan.tasks, workers=workers, ahead=_windows, **shown)
    else:
        results = map_progress(flow_task, plan.tasks, scheduler=scheduler, workers=workers, **shown)
    for result in _discarding_on_fault(results, plan.pending):
        task: FlowTask = result["task"]
        video = plan.pending[task.video_id]
        video.left -= 1
        if "error" in result:
            video.error = video.error or result["error"]
        else:
            video.stats[task.start], video.flat = result["stats"], video.flat + result["flat_frames"]
        if video.left:
            continue
        if problem := _flow_problem(video, params.pairs_per_task):
            store.discard_partial(video.partial)
            outcome.fail(task.video_id, video.row["relpath"], *problem)
            continue
        # The stats travel with the array, so a resumed run reuses them with the array it skips.
        stats = {name: [v for start in sorted(video.stats) for v in video.stats[start][name]] for name in STAT_NAMES}
        store.publish(outcome.store_path, outcome.group, task.video_id, video.partial, arrays.flow_attrs(
            video_id=task.video_id, method=params.method, estimator=estimator_info, frames_fingerprint=video.frames_fingerprint,
            fingerprint=video.done["fingerprint"], stats=stats, precision=params.precision,
        ), lease=outcome.lease)  # fmt: skip
        outcome.done(video.done, stats, "computed")


def _write_tables(out: Path, outcome: _Outcome, params: FlowParams) -> None:
    """The three tables, sorted, replaced together or none."""
    metadata = {"method": params.method, "params": method_params(params), "moving_threshold": params.moving_threshold}
    with FileSet(out) as files:
        write_table(out / "videos.parquet", sorted(outcome.done_rows, key=lambda r: r["video_id"]), FLOWED, metadata=metadata,
                    files=files)  # fmt: skip
        write_table(out / "stats.parquet", sorted(outcome.stat_rows, key=lambda r: (r["video_id"], r["frame"])), FLOW_STATS,
                    metadata=metadata, files=files)  # fmt: skip
        write_table(out / "failures.parquet", sorted(outcome.failures, key=lambda r: r["video_id"]), FAILURES, metadata=metadata,
                    files=files)  # fmt: skip
        write_table(out / "arrays.parquet", flow_listing(outcome.done_rows), STORE_ARRAYS, metadata=metadata, files=files)


def flow_fingerprint(frames_fingerprint: str, params: FlowParams) -> str:
    """What the flow array and its stats depend on: the frames, the method and its params, the task
    size (a warm-started method starts cold at each task's first pair), the layout, the stats' threshold."""
    layout_params = (params.pairs_per_task, params.chunk_frames, params.shard_frames, params.moving_threshold)
    if params.precision is not None:  # left out when unset, so arrays written before it keep theirs
        layout_params += (params.precision,)
    return fingerprint(frames_fingerprint, params.method, method_params(params), layout_params, layout.STORE_VERSION)


def _source(row: dict[str, Any], videos_root: str | Path, decode: DecodeParams, frames_attrs: dict[str, Any]) -> Source:
    spec = DecodeSpec(width=row["width"], height=row["height"], fps=decode.fps_fraction(), frame_stride=decode.frame_stride,
                      max_frames=decode.max_frames, timeout_s=decode.timeout_s)  # fmt: skip
    return Source(join(videos_root, row["relpath"]), spec, tuple(frames_attrs["decoded_size"]))


def _plan_tasks(row: dict[str, Any], params: FlowParams, store_path: str, group: str, source: Source | None) -> list[FlowTask]:
    """Create the video's partial array and cut its pairs into tasks that each write whole shards."""
    pairs = row["num_frames"] - 1
    partial = arrays.create_flow(store_path, params.method, row["video_id"], pairs=pairs, height=row["height"], width=row["width"],
                                 precision=params.precision, chunk_frames=params.chunk_frames, shard_frames=params.shard_frames)  # fmt: skip
    # Frames decoded again from the source: one task runs them all, as the decoder reads from the
    # start (a task per run would decode a long video once per run).
    step = params.pairs_per_task if source is None else pairs
    return [
        FlowTask(row["video_id"], row["relpath"], store_path, str(partial), start, min(start + step, pairs), params, source)
        for start in range(0, pairs, step)
    ]


def _flow_problem(video: _Video, pairs_per_task: int) -> tuple[str, str] | None:
    if video.error:
        return "bad_frames", video.error
    # Tasks overlap by one frame (the last frame of one is the first of the next).
    overlaps = -(-(video.row["num_frames"] - 1) // pairs_per_task) - 1
    if video.flat - overlaps >= video.row["num_frames"]:
        return "uniform_frames", "every frame is a single flat colour: there is no motion to measure"
    return None


def _frames_problem(row: dict[str, Any], frames_meta: dict[str, Any]) -> tuple[str, str] | None:
    """(reason, detail) when a video's frames (their array's metadata) cannot give flow, else None."""
    if not frames_meta.get("attributes", {}).get("fingerprint"):
        return "bad_frames", "its frames array is missing from the store; re-run the decode stage"
    if row["num_frames"] < 2:
        return "too_few_frames", f"{row['num_frames']} frame(s): flow needs at least 2"
    shape = tuple(frames_meta["shape"])
    expected = (row["num_frames"], row["height"], row["width"], 3)
    if shape != expected:
        return "bad_frames", f"frames array has shape {shape}, the decode table says {expected}; re-run the decode stage"
    return None
