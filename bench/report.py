"""The report stage at scale: the page's weight and the stage's time on N videos' tables.

    python bench/report.py [--videos 1000]

Writes synthetic stage outputs for N videos (the manifest with 5% failures, 48 flow frames and 18
candidate clips per video, two trainings' losses and the metrics; frames and flow arrays in a
store for the videos the page shows as strips), then times `stages/report.py` on them and prints
one JSON object: seconds, the page's and the images' bytes, what the page holds, and (where Chromium
is installed) how long headless Chromium takes to open the page and run its script, beside an empty
page (the browser's own start). The tables
are what the stages would write at that size; their values are random.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.report.browser import find_chromium, open_page  # noqa: E402
from pipeline.storage import store  # noqa: E402
from pipeline.storage.tables import write_table  # noqa: E402
from schemas.params import Params  # noqa: E402
from schemas.tables import CLIP_INDEX, FAILURES, FLOW_STATS, FLOWED, FRAME_SCORES, VIDEOS  # noqa: E402
from stages import report as report_stage  # noqa: E402

PAIRS, CLIPS = 48, 18


def synthetic_outputs(root: Path, videos: int, seed: int = 0) -> Params:
    """Stage outputs of `videos` videos under `root`; the params that point the report at them."""
    rng = np.random.default_rng(seed)
    data = {name: str(root / name) for name in ("manifest", "decode", "flow", "sample", "train", "evaluate", "report", "runs")}
    params = Params.model_validate({"data": {**data, "store": str(root / "store.zarr"), "videos": "videos"}, "flow": {"method": "dis"}})
    ids = [f"class_{k % 50:02d}__video_{k:05d}.mp4-{k:08x}" for k in range(videos)]
    relpaths = [f"class_{k % 50:02d}/video_{k:05d}.mp4" for k in range(videos)]
    failed = set(range(0, videos, 20))
    rows = [{"video_id": ids[k], "relpath": relpaths[k], "size_bytes": 1_000_000, "sha256": f"{k:064x}", "container": "mov,mp4",
             "codec": "h264", "width": 320, "height": 240, "display_width": 320, "display_height": 240, "sar_num": 1, "sar_den": 1,
             "pix_fmt": "yuv420p", "fps_num": 25, "fps_den": 1, "fps": 25.0, "num_frames": PAIRS + 1,
             "duration_s": float(rng.uniform(2, 10)), "rotation": 0, "is_vfr": False, "status": "ok", "warnings": ""}
            for k in range(videos) if k not in failed]  # fmt: skip
    write_table(Path(data["manifest"]) / "videos.parquet", rows, VIDEOS)
    write_table(Path(data["manifest"]) / "failures.parquet", [{"stage": "probe", "video_id": ids[k], "relpath": relpaths[k],
                "reason": "decode_error", "detail": "no frame decodes (h264: invalid NAL unit size)"} for k in sorted(failed)], FAILURES)  # fmt: skip
    usable = [k for k in range(videos) if k not in failed]
    speed = {k: (k + 1) / videos * 3 for k in usable}  # the first videos the most static, the last the most moving
    stats = [{"video_id": ids[k], "frame": i, "mean_mag": speed[k], "p50_mag": speed[k], "p90_mag": 2 * speed[k], "p99_mag": 3 * speed[k],
              "max_mag": 4 * speed[k], "moving_frac": min(1.0, speed[k] / 3), "mean_u": float(rng.normal(0, 0.5)), "mean_v": 0.0,
              "motion_edge_mean": 0.1} for k in usable for i in range(PAIRS)]  # fmt: skip
    write_table(Path(data["flow"]) / "stats.parquet", stats, FLOW_STATS)
    write_table(Path(data["flow"]) / "videos.parquet", [{"video_id": ids[k], "relpath": relpaths[k], "array": f"flow/dis/{ids[k]}",
                "method": "dis", "num_pairs": PAIRS, "fingerprint": "0" * 16} for k in usable], FLOWED)  # fmt: skip
    write_table(Path(data["flow"]) / "failures.parquet", [], FAILURES)
    scores = [{"video_id": ids[k], "frame": i, "mds": float(s), "motion_map_diff": 0.0, "attention_diff": 0.0, "flow_magnitude": speed[k],
               "motion_map_mean": 0.0, "attention_mean": 0.0} for k in usable for i, s in enumerate(rng.random(PAIRS))]  # fmt: skip
    write_table(Path(data["sample"]) / "frames.parquet", scores, FRAME_SCORES)
    clips = [{"video_id": ids[k], "start": c, "clip_len": 8, "stride": 2, "score": float(s), "rank": 0, "quantile": 0.0,
              "selected": bool(s > 0.5), "complete": True} for k in usable for c, s in enumerate(rng.random(CLIPS))]  # fmt: skip
    write_table(Path(data["sample"]) / "clips.parquet", clips, CLIP_INDEX)
    write_table(Path(data["sample"]) / "failures.parquet", [], FAILURES)
    _trainings(Path(data["train"]), Path(data["evaluate"]), rng)
    shown = usable[: params.report.extremes] + usable[-params.report.extremes :]
    for k in shown:  # the strips' arrays
        frames = rng.integers(0, 256, (PAIRS + 1, 48, 64, 3), dtype=np.uint8)
        store.write_frames(root / "store.zarr", ids[k], [frames], height=48, width=64, chunk_frames=8, shard_frames=64, attrs={})
        partial = store.create_partial(root / "store.zarr", "flow/dis", ids[k], shape=(PAIRS, 48, 64, 2), dtype="float16",
                                       chunks=(8, 48, 64, 2), shards=(64, 48, 64, 2), axes=("t", "y", "x", "c"))  # fmt: skip
        store.open_partial(partial)[:] = rng.normal(0, speed[k], (PAIRS, 48, 64, 2)).astype(np.float16)
        store.publish(root / "store.zarr", "flow/dis", ids[k], partial, {})
    return params


def _trainings(train: Path, evaluate: Path, rng: np.random.Generator) -> None:
    chance = {"rgb": 3.5, "flow": 3.5, "flow_rot": 3.5, "cross": 7.0, "cross_rot": 7.0, "lmcl": 2.08}
    for method in ("mscl", "rgb_only"):
        parts = list(chance) if method == "mscl" else ["rgb"]
        (train / method).mkdir(parents=True, exist_ok=True)
        with open(train / method / "losses.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["step", "epoch", "lr", "key_momentum", "loss", *chance])
            for step in range(1, 501):
                values = {p: chance[p] * (0.4 + 0.6 * np.exp(-step / 150)) + rng.normal(0, 0.05) if p in parts else "" for p in chance}
                writer.writerow([step, step // 10, 0.01, 0.99, sum(v for v in values.values() if v != ""), *values.values()])
        (train / method / "metrics.json").write_text(json.dumps({"steps": 500, "epochs": 50, "clips_per_s": 100.0,
                                                                 "chance": {p: chance[p] for p in parts},
                                                                 **{f"last_epoch_{p}": chance[p] * 0.4 for p in parts}}))  # fmt: skip
    scores = lambda base: {"R@1": base, "R@5": base + 20, "knn_top1": base, "clip": {"R@1": base - 2}, "linear_probe": {"top1": base + 1}}  # noqa: E731
    evaluate.mkdir(parents=True, exist_ok=True)
    write_table(evaluate / "failures.parquet", [], FAILURES)
    (evaluate / "metrics.json").write_text(json.dumps({"mscl": scores(50.0), "rgb_only": scores(15.0), "random": scores(10.0),
                                                       "diagnostics": {"flow_encoder": {"R@1": 60.0, "knn_top1": 55.0}}}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        params = synthetic_outputs(root, args.videos)
        started = time.perf_counter()
        summary = report_stage.run(params, root / "report")
        seconds = time.perf_counter() - started
        page = root / "report" / "index.html"
        images = list((root / "report" / "img").iterdir())
        result = {"videos": args.videos, "seconds": round(seconds, 2), "page_bytes": page.stat().st_size,
                  "image_bytes": sum(p.stat().st_size for p in images), "images": len(images), "counts": summary.counts}
        if find_chromium():  # how long a browser takes to open it and run its script (the headless start included)
            started = time.perf_counter()
            view = open_page(page)
            result["chromium_open_s"] = round(time.perf_counter() - started, 2)
            (root / "empty.html").write_text("<html><body></body></html>")
            started = time.perf_counter()
            open_page(root / "empty.html")
            result["chromium_empty_page_s"] = round(time.perf_counter() - started, 2)
            result["page_errors"] = view.script_errors + view.console_errors
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
