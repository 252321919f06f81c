"""sample stage: Motion Differential Sampling, offline, into Parquet clip indexes.

    <out>/frames.parquet     per-frame motion scores of every video (schemas.tables.FRAME_SCORES)
    <out>/clips.parquet      every candidate clip start, its score, rank, and whether MDS keeps it
                             (schemas.tables.CLIP_INDEX; the params are in the file's metadata)
    <out>/failures.parquet   videos with no clip: shorter than one clip, or bad flow

Per-frame scores are the costly part (they read the flow); they are computed in parallel with dask,
and kept: a re-run reuses a video's scores while its flow, `sample.block`, `sample.noise_floor` and
`sample.convention` are unchanged, so a new clip length, stride, score or threshold re-runs in
seconds and never touches the flow. Scores are rounded before anything is ranked (pipeline.sampling.clips),
so the tables are byte-identical on every machine, whatever its CPU or thread count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.parallel import map_progress
from pipeline.sampling.clips import (
    ClipSpec,
    Threshold,
    candidate_starts,
    clip_scores,
    complete_starts,
    rank_and_quantile,
    select,
)
from pipeline.sampling.mds import SCORING_VERSION, frame_scores
from pipeline.storage import codecs, store
from pipeline.storage.tables import FileSet, read_table, sweep, table_metadata, write_table
from schemas.params import SampleParams
from schemas.tables import CLIP_INDEX, FAILURES, FLOWED, FRAME_SCORES
from stages.common import Summary, failure, fingerprint, log_failure

STAGE = "sample"
SCORE_COLUMNS = [name for name in FRAME_SCORES.names if name not in ("video_id", "frame")]
BLOCK_FRAMES = 256  # flow frames read at once, so memory stays flat for long videos


@dataclass(frozen=True)
class ScoreTask:
    video_id: str
    store: str
    method: str
    block: int
    noise_floor: float
    convention: str
    frames: int  # flow frames, for the progress bar
    grid: float | None = None  # score the flow rounded to multiples of this many px


def score_video(task: ScoreTask) -> dict[str, Any]:
    """Per-frame scores of one video, reading its flow a block at a time (one frame of overlap, since
    s_i needs flow frame i+1). {"error": why} for flow that cannot be scored."""
    import torch

    torch.set_num_threads(1)  # parallelism is across workers
    try:
        flow = store.open_flow(task.store, task.method, task.video_id)
    except store.CorruptChunkError as exc:
        return {"video_id": task.video_id, "error": str(exc)}
    n = flow.shape[0]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SCORE_COLUMNS}
    for start in range(0, n, BLOCK_FRAMES):
        stop = min(start + BLOCK_FRAMES, n)
        try:
            block = flow[start : min(stop + 1, n)]
            # Exactly the values a fixed-point store at this grid holds (a store at the grid holds them already).
            if task.grid is not None and flow.scale != task.grid:
                block = codecs.from_fixed(codecs.to_fixed(block, task.grid), task.grid)
            block = np.asarray(block, np.float32)
            scores = frame_scores(block, block=task.block, noise_floor=task.noise_floor, convention=task.convention)
        except store.CorruptChunkError as exc:  # names the frames and ends with the command that repairs them
            return {"video_id": task.video_id, "error": str(exc)}
        except ValueError as exc:
            return {"video_id": task.video_id, "error": f"{exc} in flow frames {start}-{stop - 1}"}
        for name in SCORE_COLUMNS:
            parts[name].append(scores[name][: stop - start])
    return {"video_id": task.video_id, "scores": {name: np.concatenate(parts[name]) for name in SCORE_COLUMNS}}


def _frame_rows(video_id: str, scores: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    count = len(scores["mds"])
    return [{"video_id": video_id, "frame": i, **{name: float(scores[name][i]) for name in SCORE_COLUMNS}} for i in range(count)]


def _previous_scores(out: Path, keys: dict[str, str]) -> dict[str, dict[str, np.ndarray]]:
    """Per-frame scores of the last run for videos whose key (flow, scoring params) is unchanged."""
    path = out / "frames.parquet"
    try:
        old_keys = table_metadata(path).get("video_keys", {})
        table = read_table(path, FRAME_SCORES).to_pandas()
    except (FileNotFoundError, ValueError):
        return {}
    reused = {}
    for video_id, rows in table.groupby("video_id", sort=False):
        if old_keys.get(video_id) == keys.get(video_id):
            rows = rows.sort_values("frame")
            reused[video_id] = {name: rows[name].to_numpy(np.float32) for name in SCORE_COLUMNS}
    return reused


def index_rows(video_id: str, frame: dict[str, np.ndarray], params: SampleParams) -> list[dict[str, Any]]:
    """The clip index rows of one video from its per-frame scores (empty if it has no candidate).

    Frame scores arrive as stored (float32), whether computed now or read back from frames.parquet,
    so a re-run that reuses them gives the same bytes."""
    spec = ClipSpec(params.clip_len, params.stride)
    rule = Threshold(params.threshold, params.quantile, params.absolute, params.top_k, params.min_clips_per_video)
    scores = clip_scores(np.asarray(frame[params.score], np.float32), spec)
    starts = candidate_starts(len(scores), spec, params.convention)
    if len(starts) == 0:
        return []
    complete = np.isin(starts, complete_starts(len(scores), spec))
    keep = select(scores, starts, rule)
    rank, quantile = rank_and_quantile(scores[starts])
    return [
        {"video_id": video_id, "start": int(s), "clip_len": spec.length, "stride": spec.stride, "score": float(scores[s]),
         "rank": int(r), "quantile": float(q), "selected": bool(k), "complete": bool(c)}
        for s, r, q, k, c in zip(starts, rank, quantile, keep, complete, strict=True)
    ]  # fmt: skip


def run(
    params: SampleParams,
    flowed: str | Path,
    store_path: str | Path,
    out: str | Path,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
) -> Summary:
    summary = Summary("sample")
    out, store_path = Path(out), store.location(store_path)  # a local path made absolute, or an fsspec URL as given
    sweep(out)  # what a killed run left: its tables' temporary files, a committed set to finish
    videos = read_table(Path(flowed) / "videos.parquet", FLOWED).to_pylist()
    scoring = (params.block, params.noise_floor, params.convention, SCORING_VERSION)
    scoring += () if params.flow_grid is None else (params.flow_grid,)  # unset: the keys of scores made before it
    keys = {row["video_id"]: fingerprint(row["fingerprint"], *scoring) for row in videos}
    scores = _previous_scores(out, keys)
    summary.add("videos scored before", len(scores))
    tasks = [ScoreTask(row["video_id"], store_path, row["method"], params.block, params.noise_floor, params.convention,
                       row["num_pairs"], params.flow_grid) for row in videos if row["video_id"] not in scores]  # fmt: skip
    failures = []
    relpaths = {row["video_id"]: row["relpath"] for row in videos}
    for result in map_progress(score_video, tasks, scheduler=scheduler, workers=workers, desc="sample", unit="frame",
                               weight=lambda task: task.frames):  # fmt: skip
        if "error" in result:
            failures.append(failure(STAGE, result["video_id"], relpaths[result["video_id"]], "bad_flow", result["error"]))
            log_failure(failures[-1])
        else:
            scores[result["video_id"]] = result["scores"]
    summary.add("videos scored now", len(tasks) - len(failures))
    frame_rows, clip_rows = [], []
    spec = ClipSpec(params.clip_len, params.stride)
    for video_id in sorted(scores):
        frame_rows.extend(_frame_rows(video_id, scores[video_id]))
        rows = index_rows(video_id, scores[video_id], params)
        if not rows:
            detail = f"{len(scores[video_id])} flow frames, a clip of {spec.length} at stride {spec.stride} spans {spec.span}"
            failures.append(failure(STAGE, video_id, relpaths[video_id], "shorter_than_clip", detail))
            log_failure(failures[-1])
        clip_rows.extend(rows)
    failures.sort(key=lambda row: row["video_id"])
    scored = {video_id: keys[video_id] for video_id in scores}
    metadata = {"params": params.model_dump(mode="json")}
    with FileSet(out) as files:  # the three tables replaced together, or none
        write_table(out / "frames.parquet", frame_rows, FRAME_SCORES, files=files,
                    metadata={"block": params.block, "noise_floor": params.noise_floor, "convention": params.convention,
                              "video_keys": scored})  # fmt: skip
        write_table(out / "clips.parquet", clip_rows, CLIP_INDEX, metadata=metadata, files=files)
        write_table(out / "failures.parquet", failures, FAILURES, metadata=metadata, files=files)
    summary.add("candidate clips", len(clip_rows))
    summary.add("selected", sum(row["selected"] for row in clip_rows))
    summary.add("videos without clips", len(failures))
    return summary
