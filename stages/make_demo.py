"""make_demo stage: a small labelled dataset of synthetic videos with known motion.

    <out>/videos/<label>/<label>_<k>.mp4    H.264 videos, the pipeline's default input
    <out>/truth/<label>/<label>_<k>.json    ground-truth motion of each (pipeline/data/synth.py)
    <out>/labels.parquet                    class of each video (schemas.tables.DEMO_LABELS)

The class is the object's motion; textures, colours, sizes and camera pans are random and the same
for every class, so appearance alone does not give the class away. Deterministic in `seed`. The
other params (texture family, object size and count, motion and camera speed, the classes) make
variants that a training recipe was not tuned on (bench/variants/).
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data import synth
from pipeline.io.encode import encode_video
from pipeline.parallel import map_progress
from pipeline.storage.tables import write_table
from schemas.params import MakeDemoParams
from schemas.tables import DEMO_LABELS
from stages.common import Summary, log


@dataclass(frozen=True)
class DemoItem:
    relpath: str  # relative to <out>/videos
    label: str
    label_index: int
    seed: int
    camera_motion: bool
    root: str  # where to write (a temporary folder until the stage is done)
    params: MakeDemoParams


def plan(params: MakeDemoParams, root: str) -> list[DemoItem]:
    """Every video to make, with its own seed derived from (seed, class, index)."""
    items = []
    for label_index, label in enumerate(params.classes):
        for k in range(params.videos_per_class):
            seq = np.random.SeedSequence([params.seed, label_index, k])
            video_seed = int(seq.generate_state(1)[0])
            camera = bool(np.random.default_rng(video_seed).random() < params.camera_motion_fraction)
            relpath = f"{label}/{label}_{k:03d}.mp4"
            items.append(DemoItem(relpath, label, label_index, video_seed, camera, root, params))
    return items


def make_one(item: DemoItem) -> dict:
    p = item.params
    style = synth.DemoStyle(texture=p.texture, object_size=p.object_size, speed=p.speed, camera_speed=p.camera_speed, objects=p.objects)
    truth = synth.demo_scene(item.label, item.seed, width=p.width, height=p.height, frames=p.frames, fps=p.fps,
                             camera_motion=item.camera_motion, style=style)  # fmt: skip
    root = Path(item.root)
    encode_video(synth.render_frames(truth), root / "videos" / item.relpath, fps=p.fps, codec="h264", quality=p.crf)
    truth_rel = f"truth/{Path(item.relpath).with_suffix('.json')}"
    (root / truth_rel).parent.mkdir(parents=True, exist_ok=True)
    (root / truth_rel).write_text(truth.to_json())
    return {
        "relpath": item.relpath, "label": item.label, "label_index": item.label_index,
        "camera_motion": item.camera_motion, "seed": item.seed, "truth": truth_rel,
    }  # fmt: skip


def run(params: MakeDemoParams, out: str | Path, *, scheduler: str | None = None, workers: int | None = None) -> Summary:
    """Build the demo dataset into `out`, replacing it whole and atomically."""
    out = Path(out)
    summary = Summary("make-demo")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}"
    tmp.mkdir()  # 0o777 less the umask, like the folder it becomes (mkdtemp's 0o700 kept the group out)
    try:
        items = plan(params, str(tmp))
        rows = list(
            map_progress(make_one, items, scheduler=scheduler, workers=workers, desc="make-demo", unit="video")
        )
        rows.sort(key=lambda row: row["relpath"])
        write_table(tmp / "labels.parquet", rows, DEMO_LABELS, metadata={"params": params.model_dump(mode="json")})
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary.add("videos", len(rows))
    summary.add("classes", len(params.classes))
    summary.add("frames", len(rows) * params.frames)
    for pair in params.flip_exchanged():
        summary.notes.append(f"a horizontal flip turns {pair[0]} into {pair[1]}: train with dataset.flip: 0 to tell them apart")
    log.info("demo videos in %s", out / "videos")
    return summary
