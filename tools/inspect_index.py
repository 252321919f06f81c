"""Views of a clip index for people (rich tables, plots) and scripts (CSV, JSON)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.storage.tables import read_table, table_metadata
from schemas.errors import MissingInputError


@dataclass
class IndexView:
    clips: pd.DataFrame
    frames: pd.DataFrame
    params: dict


def load(folder: str | Path) -> IndexView:
    folder = Path(folder)
    for name in ("clips.parquet", "frames.parquet"):
        if not (folder / name).exists():
            raise MissingInputError(f"{folder / name} does not exist; run `python cli.py sample` (or dvc repro) first")
    return IndexView(
        clips=read_table(folder / "clips.parquet").to_pandas(),
        frames=read_table(folder / "frames.parquet").to_pandas(),
        params=table_metadata(folder / "clips.parquet").get("params", {}),
    )


def summary_view(view: IndexView) -> pd.DataFrame:
    """One row per quantity: videos, candidates, selected, and the clip score distribution."""
    clips, selected = view.clips, view.clips[view.clips.selected]
    per_video = clips.groupby("video_id").selected.agg(["size", "sum"])
    rows = [
        ("videos with clips", clips.video_id.nunique()),
        ("videos scored", view.frames.video_id.nunique()),
        ("candidate clips", len(clips)),
        ("selected clips", len(selected)),
        ("selected share", round(len(selected) / max(1, len(clips)), 3)),
        ("selected per video (min / median / max)", f"{per_video['sum'].min()} / {per_video['sum'].median():g} / {per_video['sum'].max()}"),
    ]
    quantiles = clips.score.quantile([0, 0.25, 0.5, 0.75, 1.0]) if len(clips) else pd.Series(dtype=float)
    for q, value in quantiles.items():
        rows.append((f"score {'min' if q == 0 else 'max' if q == 1 else f'p{int(q * 100)}'}", round(float(value), 5)))
    rows += [(f"param {key}", value) for key, value in view.params.items()]
    return pd.DataFrame(rows, columns=["quantity", "value"]).astype({"value": str})


def video_view(view: IndexView, video_id: str) -> pd.DataFrame:
    clips = view.clips[view.clips.video_id == video_id]
    if clips.empty:
        known = ", ".join(sorted(view.clips.video_id.unique())[:5])
        raise KeyError(f"no clips for video {video_id!r} (ids look like: {known}, ...)")
    return clips[["start", "score", "rank", "quantile", "selected"]].reset_index(drop=True)


def top_view(view: IndexView, count: int) -> pd.DataFrame:
    ordered = view.clips.sort_values(["score", "video_id", "start"], ascending=[False, True, True])
    high = ordered.head(count).assign(end="highest")
    low = ordered.tail(count).iloc[::-1].assign(end="lowest")
    return pd.concat([high, low])[["end", "video_id", "start", "score", "rank", "selected"]].reset_index(drop=True)


def plot_video(view: IndexView, video_id: str, out: str | Path) -> Path:
    """The video's per-frame and clip scores, with the frames its selected clips use shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clips = video_view(view, video_id)
    frames = view.frames[view.frames.video_id == video_id].sort_values("frame")
    score = view.params.get("score", "mds")
    length, stride = int(view.params.get("clip_len", 8)), int(view.params.get("stride", 4))
    figure, axis = plt.subplots(figsize=(10, 3.2), dpi=100)
    for start in clips.start[clips.selected]:
        axis.axvspan(start, start + (length - 1) * stride, color="tab:green", alpha=0.06, linewidth=0)
    axis.plot(frames.frame, frames[score], color="0.55", linewidth=1, label=f"per-frame {score}")
    axis.plot(clips.start, clips.score, color="tab:blue", linewidth=1.8, label="clip score at its start")
    axis.scatter(clips.start[clips.selected], clips.score[clips.selected], s=10, color="tab:green", zorder=3, label="selected start")
    axis.set_xlabel("frame")
    axis.set_ylabel("score")
    axis.set_title(f"{video_id}: {int(clips.selected.sum())} of {len(clips)} clips selected (shaded: frames they use)", fontsize=9)
    axis.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
    return out


def emit(frame: pd.DataFrame, output: str) -> None:
    """Print a view: a rich table, CSV or JSON records."""
    if output == "csv":
        frame.to_csv(sys.stdout, index=False)
    elif output == "json":
        print(json.dumps(json.loads(frame.to_json(orient="records")), indent=1))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(show_header=True, header_style="bold")
        for column in frame.columns:
            table.add_column(str(column), justify="right" if frame[column].dtype.kind in "fiu" else "left")
        for row in frame.itertuples(index=False):
            table.add_row(*(f"{v:.5g}" if isinstance(v, float) else str(v) for v in row))
        Console().print(table)
