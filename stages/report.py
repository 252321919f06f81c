"""report stage (`python cli.py report`): what a run made, as one page, from the stage outputs alone.

    <out>/index.html          the page: opens from the file system, fetches nothing
    <out>/img/*.webp          frame-over-flow strips of the most static and the most moving videos

It reads the tables the other stages wrote (and the store, for a few strips), whichever exist: after
`sample` alone it shows the data, after `evaluate` the training and the metrics too. Nothing is
computed again. The page names every input it read; dvc.yaml lists the same files, so `dvc repro`
re-runs it only when one changes. A large dataset stays light: the tables travel as JSON and are
paged in the page, and the images are bounded by params (report).
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.io import sources
from pipeline.report import figures
from pipeline.report.page import Section, image, render
from pipeline.storage import durable
from pipeline.storage import store as stores
from pipeline.storage.faults import CorruptChunkError
from pipeline.storage.tables import read_table
from schemas.errors import MissingInputError
from schemas.params import Params
from stages.common import PROJECT, Summary, log

STAGE = "report"
METHODS = ("mscl", "rgb_only")


class Inputs:
    """The stage outputs the report reads, each read at most once, and the list of those it read."""

    def __init__(self, params: Params) -> None:
        d = params.data
        self.data = d
        self.paths = {
            "videos": Path(d.manifest) / "videos.parquet", "probe failures": Path(d.manifest) / "failures.parquet",
            "decode failures": Path(d.decode) / "failures.parquet",
            "flowed": Path(d.flow) / "videos.parquet", "flow stats": Path(d.flow) / "stats.parquet",
            "flow failures": Path(d.flow) / "failures.parquet", "frame scores": Path(d.sample) / "frames.parquet",
            "clips": Path(d.sample) / "clips.parquet", "sample failures": Path(d.sample) / "failures.parquet",
            "evaluate failures": Path(d.evaluate) / "failures.parquet", "metrics": Path(d.evaluate) / "metrics.json",
            **{f"{m} metrics": Path(d.train) / m / "metrics.json" for m in METHODS},
            **{f"{m} losses": Path(d.train) / m / "losses.csv" for m in METHODS},
        }  # fmt: skip
        self.read: list[Path] = []

    def table(self, name: str, columns: list[str] | None = None) -> pd.DataFrame | None:
        if (path := self._found(name)) is None:
            return None
        table = read_table(path)  # checks its ids and relpaths, as every reader of the tables does
        return (table.select(columns) if columns else table).to_pandas()

    def json(self, name: str) -> dict[str, Any] | None:
        return None if (path := self._found(name)) is None else json.loads(path.read_text())

    def csv(self, name: str) -> list[dict[str, str]] | None:
        if (path := self._found(name)) is None:
            return None
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))

    def _found(self, name: str) -> Path | None:
        """The input's path, recorded as read, or None where the stage that writes it has not run."""
        path = self.paths[name]
        if not path.is_file():
            return None
        self.read.append(path)
        return path


def run(params: Params, out: str | Path, *, params_file: str | Path = "params.yaml") -> Summary:
    summary = Summary(STAGE)
    out = Path(out)
    inputs = Inputs(params)
    videos = inputs.table("videos")
    if videos is None:
        raise MissingInputError(f"no manifest at {inputs.paths['videos']}: run the probe stage (and the stages after it) first")
    images = out / "img"
    images.mkdir(parents=True, exist_ok=True)
    for old in [*images.glob("*.webp"), *images.glob("*.jpg")]:  # an earlier report's strips (only its own kinds of file)
        old.unlink()
    sections = [
        _videos(inputs, videos, params),
        _flow(inputs, params, images, summary),
        _sampling(inputs, params),
        _training(inputs),
        _evaluation(inputs),
    ]
    sections.insert(0, _run(params, params_file, inputs))  # last: it lists every input the others read
    page = render("MSCL pipeline report", f"{len(videos):,} usable videos under {sources.redact(params.data.videos)}", sections)
    durable.atomic_write_bytes(out / "index.html", lambda tmp: Path(tmp).write_text(page))  # whole, or the old page
    summary.add("videos", len(videos))
    summary.add("images", len(list(images.iterdir())))
    summary.add("inputs read", len(inputs.read))
    summary.notes.append(f"open {out / 'index.html'} in a browser ({(out / 'index.html').stat().st_size / 1e6:.2f} MB)")
    return summary


def _run(params: Params, params_file: str | Path, inputs: Inputs) -> Section:
    section = Section("run", "The run")
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    section.counts([("made", now), ("code", _code_version()), ("params file", str(params_file))])
    changed = [(key, json.dumps(value), json.dumps(default)) for key, value, default in _differences(params.model_dump(mode="json"),
               Params().model_dump(mode="json"))]  # fmt: skip
    section.text(f"{len(changed)} params differ from the schema's defaults (schemas/params.py):")
    section.table("params", ["param", "value", "default"], changed, page_rows=params.report.page_rows)
    records_at = Path(os.environ.get("MSCL_RUNS") or params.data.runs)  # where record_run wrote them (stages/common.py)
    runs = sorted(records_at.glob("*.json")) if records_at.is_dir() else []
    records = [json.loads(p.read_text()) for p in runs]
    if records:
        section.text("Each stage's last run (recorded by the command itself):")
        section.table("runs", ["stage", "started (UTC)", "seconds", "counts"],
                      [[r.get("stage"), r.get("started"), r.get("seconds"), json.dumps(r.get("counts", {}))] for r in records],
                      page_rows=params.report.page_rows)  # fmt: skip
    else:
        section.text(f"No run records under {records_at} (each command writes one as it ends).")
    section.text("Inputs this page was made from:")
    section.table("inputs", ["file", "bytes"], [[str(p), p.stat().st_size] for p in inputs.read], page_rows=params.report.page_rows)
    return section


def _differences(value: Any, default: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(value, dict) and isinstance(default, dict):
        return [d for key in sorted(set(value) | set(default))
                for d in _differences(value.get(key), default.get(key), f"{prefix}.{key}" if prefix else key)]  # fmt: skip
    return [] if value == default else [(prefix, value, default)]


def _code_version() -> str:
    try:
        found = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=PROJECT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git)"
    return found.stdout.strip() or "unknown (not a git checkout)"


def _failures(inputs: Inputs) -> pd.DataFrame:
    frames = [t for name in ("probe failures", "decode failures", "flow failures", "sample failures", "evaluate failures")
              if (t := inputs.table(name)) is not None and len(t)]  # fmt: skip
    columns = ["stage", "relpath", "reason", "detail"]
    return pd.concat(frames)[columns] if frames else pd.DataFrame(columns=columns)


def _videos(inputs: Inputs, videos: pd.DataFrame, params: Params) -> Section:
    section = Section("videos", "Videos")
    failures = _failures(inputs)
    statuses = videos["status"].value_counts().to_dict()
    by_stage = failures.groupby("stage").size().to_dict() if len(failures) else {}
    section.counts([("usable", len(videos)), *[(f"  {k}", v) for k, v in sorted(statuses.items())],
                    *[(f"failed at {stage}", n) for stage, n in sorted(by_stage.items())]])  # fmt: skip
    section.text(f"{len(failures)} videos could not be used, with the reason (sortable, filterable):")
    section.table("failures", ["stage", "relpath", "reason", "detail"], failures.values.tolist(), page_rows=params.report.page_rows)
    sizes = (videos["width"].astype(str) + "x" + videos["height"].astype(str)).value_counts().head(12)
    section.figures([
        (figures.histogram(videos["duration_s"], xlabel="duration (s)"), "Duration of the usable videos"),
        (figures.bars(sizes.index.tolist(), sizes.tolist(), xlabel="videos"), "Resolutions (coded size), the 12 most common"),
        (figures.histogram(videos["fps"], xlabel="frames per second", bins=20), "Frame rates"),
    ])  # fmt: skip
    degraded = videos[videos["status"] != "ok"]
    if len(degraded):
        section.text(f"{len(degraded)} videos decode only in part (kept, with FFmpeg's complaints):")
        section.table("degraded", ["relpath", "warnings"], degraded[["relpath", "warnings"]].values.tolist(), page_rows=params.report.page_rows)
    return section


def _motion(stats: pd.DataFrame) -> pd.DataFrame:
    """Per video: median flow magnitude, moving share, and camera pan (the median of the frames' mean motion)."""
    grouped = stats.groupby("video_id")
    motion = pd.DataFrame({
        "median_magnitude": grouped["p50_mag"].median(), "p90_magnitude": grouped["p90_mag"].median(),
        "moving_share": grouped["moving_frac"].mean(), "pan_u": grouped["mean_u"].median(), "pan_v": grouped["mean_v"].median(),
        "pairs": grouped.size(),
    })  # fmt: skip
    motion["camera_pan"] = np.hypot(motion["pan_u"], motion["pan_v"])
    return motion.reset_index()


def _flow(inputs: Inputs, params: Params, images: Path, summary: Summary) -> Section:
    section = Section("flow", f"Optical flow ({params.flow.method})")
    stats = inputs.table("flow stats", ["video_id", "p50_mag", "p90_mag", "moving_frac", "mean_u", "mean_v"])
    flowed = inputs.table("flowed", ["video_id", "relpath"])
    if stats is None or flowed is None or not len(stats):
        section.text("The flow stage has not run yet.", "missing")
        return section
    motion = _motion(stats).merge(flowed, on="video_id")
    section.figures([
        (figures.histogram(motion["median_magnitude"], xlabel="median flow magnitude (px/frame)"), "How much each video moves"),
        (figures.histogram(motion["moving_share"], xlabel=f"share of pixels moving (> {params.flow.moving_threshold} px/frame)"),
         "How much of each frame moves"),
        (figures.histogram(motion["camera_pan"], xlabel="camera pan (px/frame)"), "Global motion: the median of the frames' mean flow"),
    ])  # fmt: skip
    columns = ["relpath", "median_magnitude", "p90_magnitude", "moving_share", "camera_pan", "pairs"]
    section.table("motion", columns, motion[columns].values.tolist(), page_rows=params.report.page_rows)
    order = motion.sort_values("median_magnitude")
    picks = [("most static", row) for row in order.head(params.report.extremes).itertuples()]
    picks += [("most moving", row) for row in order.tail(params.report.extremes)[::-1].itertuples() if row.video_id not in
              {p.video_id for _, p in picks}]  # fmt: skip
    strips = []
    for kind, row in picks:
        try:
            path = _strip(params, row.video_id, images)
        except (CorruptChunkError, MissingInputError, OSError, ValueError) as exc:
            log.warning("report: no strip for %s: %s", row.relpath, exc)
            continue
        strips.append((image(f"img/{path.name}", f"{row.relpath}: frames over their flow"),
                       f"{kind}: {row.relpath}, median {row.median_magnitude:.2f} px/frame, moving {row.moving_share:.0%}"))  # fmt: skip
    section.text("The extremes, frames over their flow (colour: direction; saturation: speed, one scale per strip):")
    section.figures(strips)
    summary.add("strips", len(strips))
    return section


def _strip(params: Params, video_id: str, images: Path) -> Path:
    frames = stores.open_frames(params.data.store, video_id)
    flow = stores.open_flow(params.data.store, params.flow.method, video_id)
    picks = np.unique(np.linspace(0, len(flow) - 1, min(params.report.strip_frames, len(flow))).round().astype(int))
    encoded = figures.strip(frames.take(picks), flow.to_pixels(flow.take(picks)), image_format=params.report.image_format,
                            quality=params.report.quality)  # fmt: skip
    path = images / f"{video_id}.{'webp' if params.report.image_format == 'webp' else 'jpg'}"
    durable.atomic_write_bytes(path, lambda tmp: Path(tmp).write_bytes(encoded))
    return path


def _sampling(inputs: Inputs, params: Params) -> Section:
    section = Section("sampling", "Motion Differential Sampling")
    clips = inputs.table("clips", ["video_id", "start", "clip_len", "stride", "score", "selected", "complete"])
    scores = inputs.table("frame scores", ["video_id", "frame", "mds"])
    if clips is None or scores is None:
        section.text("The sample stage has not run yet.", "missing")
        return section
    complete = clips[clips["complete"]]
    rate = complete.groupby("video_id")["selected"].agg(["mean", "sum", "size"]).rename(columns={"mean": "rate", "sum": "kept", "size": "candidates"})
    section.counts([("candidate clips", len(complete)), ("selected", int(complete["selected"].sum())),
                    ("selection rate", f"{complete['selected'].mean():.1%}" if len(complete) else "-")])  # fmt: skip
    section.figures([
        (figures.histogram(rate["rate"], xlabel="share of a video's clips selected", bins=20), "Selection rate per video"),
        (figures.histogram(complete["score"], xlabel="clip score (mean MDS of its frames)"), "Clip scores, all candidates"),
        (figures.histogram(complete.loc[complete["selected"], "score"], xlabel="clip score"), "Clip scores, selected"),
    ])  # fmt: skip
    curves, chosen = [], _curve_videos(rate["rate"], params.report.curves, params.report.seed)
    by_video = scores.groupby("video_id")
    for video_id in chosen:
        frame = by_video.get_group(video_id).sort_values("frame")
        kept = complete[(complete["video_id"] == video_id) & complete["selected"]]
        spans = [(int(r.start), int(r.start + (r.clip_len - 1) * r.stride)) for r in kept.itertuples()]
        curves.append((figures.score_curve(frame["mds"].to_numpy(), spans, title=video_id),
                       f"{video_id}: {rate.loc[video_id, 'rate']:.0%} of {int(rate.loc[video_id, 'candidates'])} clips selected (shaded)"))  # fmt: skip
    section.text("Score curves, selected clips shaded: the most selective videos, the least, and some at random.")
    section.figures(curves)
    table = rate.reset_index()
    section.table("selection", ["video_id", "rate", "kept", "candidates"], table[["video_id", "rate", "kept", "candidates"]].values.tolist(),
                  page_rows=params.report.page_rows)  # fmt: skip
    return section


def _curve_videos(rate: pd.Series, count: int, seed: int) -> list[str]:
    """`count` videos for score curves: a third the most selective, a third the least, the rest at random."""
    if count <= 0:
        return []
    order = list(rate.sort_values(kind="stable").index)
    third = max(1, count // 3)
    chosen = list(dict.fromkeys(order[::-1][:third] + order[:third]))[:count]
    rest = [video for video in order if video not in chosen]
    picks = np.random.default_rng(seed).permutation(len(rest))[: count - len(chosen)]
    return chosen + [rest[i] for i in picks]


def _training(inputs: Inputs) -> Section:
    section = Section("training", "Training")
    shown = []
    for method in METHODS:
        metrics, rows = inputs.json(f"{method} metrics"), inputs.csv(f"{method} losses")
        if metrics is None or not rows:
            section.text(f"{method}: not trained yet.", "missing")
            continue
        parts = [name for name in metrics.get("chance", {}) if rows and name in rows[0] and rows[0][name] not in ("", None)]
        steps = [int(r["step"]) for r in rows]
        losses = {name: [float(r[name]) for r in rows] for name in parts}
        shown.append((figures.loss_curves(steps, losses, metrics.get("chance", {}), title=method), f"{method}: every loss against its chance value"))
        section.counts([(f"{method}: steps", metrics.get("steps")), ("epochs", metrics.get("epochs")), ("clips/s", metrics.get("clips_per_s")),
                        *[(f"last epoch {name} (chance {metrics['chance'][name]:.2f})", metrics.get(f"last_epoch_{name}")) for name in parts]])  # fmt: skip
    section.figures(shown)
    return section


def _evaluation(inputs: Inputs) -> Section:
    section = Section("evaluation", "Evaluation")
    metrics = inputs.json("metrics")
    if metrics is None:
        section.text("The evaluate stage has not run yet.", "missing")
        return section
    encoders = [name for name in ("mscl", "rgb_only", "random") if name in metrics]
    keys = [k for k in metrics[encoders[0]] if not isinstance(metrics[encoders[0]][k], dict)] if encoders else []
    def row(label: str, values: list[Any]) -> list[Any]:  # the values, then the first encoder's margin over each other
        return [label, *values, *[round(values[0] - v, 2) if None not in (values[0], v) else None for v in values[1:]]]

    rows = [row(key, [metrics[e].get(key) for e in encoders]) for key in keys]
    for group in ("clip", "linear_probe"):
        for key in (metrics[encoders[0]].get(group) or {}) if encoders else []:
            rows.append(row(f"{group} {key}", [(metrics[e].get(group) or {}).get(key) for e in encoders]))
    columns = ["metric", *encoders, *[f"{encoders[0]} - {e}" for e in encoders[1:]]]
    section.text("Retrieval and probes of the RGB encoders (video-level unless named), with MSCL's margins:")
    section.table("metrics", columns, rows, page_rows=50)
    diagnostics = metrics.get("diagnostics") or {}
    if diagnostics:
        names = sorted({k for d in diagnostics.values() for k in d})
        section.text("Diagnostics (what motion alone and the flow encoder retrieve):")
        section.table("diagnostics", ["probe", *names], [[probe, *[d.get(n) for n in names]] for probe, d in diagnostics.items()], page_rows=50)
    return section
