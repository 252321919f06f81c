"""Decode throughput: the decode stage against a plain sequential OpenCV loop, on the same videos.

    python bench/decode.py [--videos N] [--frames F] [--workers W]

Makes UCF101-like inputs once (320x240 H.264 at 25 fps, under data/bench/), then measures, in this
one run, frames per second of:
  - baseline: `cv2.VideoCapture` + `cv2.resize` to the same stored size, one video after another,
    frames kept in memory (what a user's first script does; it writes nothing);
  - baseline_jpeg: the same loop writing every frame as a JPEG file (the "rawframes" folders of
    mmaction2-style tools, which users keep today);
  - the decode stage in-process ("sync"), with a 1-worker and a W-worker local dask cluster (these
    write Zarr shards; cluster start-up is included, as a user would wait for it);
  - what fsync costs (docs/reliability.md, "What is promised under power loss"): the stage in-process with fsync
    on (the default) and off (MSCL_FSYNC=0), alternated --fsync-repeats times, the best of each.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.data import synth  # noqa: E402
from pipeline.io.decode import output_size  # noqa: E402
from pipeline.io.encode import encode_video  # noqa: E402
from pipeline.parallel import dask_client, default_workers  # noqa: E402
from schemas.params import DecodeParams, ProbeParams  # noqa: E402
from stages import decode as decode_stage  # noqa: E402
from stages import probe as probe_stage  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent / "data" / "bench" / "decode"


def make_inputs(count: int, frames: int) -> Path:
    videos = ROOT / f"videos_{count}x{frames}"
    if videos.is_dir() and len(list(videos.glob("*.mp4"))) == count:
        return videos
    shutil.rmtree(videos, ignore_errors=True)
    labels = ["slide_horizontal", "rotate", "zoom_in", "oscillate"]
    for k in range(count):
        truth = synth.demo_scene(labels[k % 4], k, width=320, height=240, frames=frames, fps=25, camera_motion=k % 2 == 0)
        encode_video(synth.render_frames(truth), videos / f"v{k:03d}.mp4", fps=25, quality=18)
    return videos


def baseline(videos: list[Path], short_side: int, jpeg_dir: Path | None = None) -> int:
    total = 0
    for path in videos:
        capture = cv2.VideoCapture(str(path))
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        size = output_size(width, height, short_side)
        clip = []
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            if jpeg_dir is None:
                clip.append(cv2.cvtColor(small, cv2.COLOR_BGR2RGB))
            else:
                folder = jpeg_dir / path.stem
                folder.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(folder / f"img_{len(clip):05d}.jpg"), small, [cv2.IMWRITE_JPEG_QUALITY, 95])
                clip.append(None)
        capture.release()
        total += len(clip)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=48)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--fsync-repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cv2.setNumThreads(1)  # the baseline is the plain single-process loop

    videos = make_inputs(args.videos, args.frames)
    work = ROOT / "work"
    shutil.rmtree(work, ignore_errors=True)
    probe_stage.run(ProbeParams(), videos, work / "manifest", scheduler="sync")
    params = DecodeParams()
    results: dict[str, object] = {
        "videos": args.videos, "frames_per_video": args.frames, "source_size": "320x240",
        "short_side": params.short_side, "cores": default_workers(),
    }  # fmt: skip

    start = time.perf_counter()
    frames = baseline(sorted(videos.glob("*.mp4")), params.short_side)
    results["baseline_cv2_loop_fps"] = round(frames / (time.perf_counter() - start), 1)
    results["frames"] = frames
    start = time.perf_counter()
    assert baseline(sorted(videos.glob("*.mp4")), params.short_side, jpeg_dir=work / "jpeg") == frames
    results["baseline_cv2_jpeg_fps"] = round(frames / (time.perf_counter() - start), 1)
    results["baseline_jpeg_files"] = sum(1 for _ in (work / "jpeg").rglob("*.jpg"))

    start = time.perf_counter()
    with dask_client(None, args.workers):
        pass
    results[f"local_cluster_{args.workers}_workers_start_stop_s"] = round(time.perf_counter() - start, 2)

    runs = [("stage_sync", "sync", None), ("stage_1_worker", None, 1), (f"stage_{args.workers}_workers", None, args.workers)]
    for name, scheduler, workers in runs:
        store = work / f"{name}.zarr"
        start = time.perf_counter()
        summary = decode_stage.run(params, work / "manifest", videos, store, work / name, scheduler=scheduler, workers=workers)
        seconds = time.perf_counter() - start
        assert summary.counts.get("frames stored") == frames, summary.text()
        results[f"{name}_fps"] = round(frames / seconds, 1)
        results[f"{name}_vs_baseline"] = round(results[f"{name}_fps"] / results["baseline_cv2_loop_fps"], 2)
        results[f"{name}_vs_baseline_jpeg"] = round(results[f"{name}_fps"] / results["baseline_cv2_jpeg_fps"], 2)
    results["store_files"] = sum(1 for p in (work / f"stage_{args.workers}_workers.zarr").rglob("*") if p.is_file())

    best = {"on": float("inf"), "off": float("inf")}
    for repeat in range(args.fsync_repeats):
        for mode in ("on", "off") if repeat % 2 == 0 else ("off", "on"):
            name = f"fsync_{mode}_{repeat}"
            os.environ["MSCL_FSYNC"] = "1" if mode == "on" else "0"
            start = time.perf_counter()
            decode_stage.run(params, work / "manifest", videos, work / f"{name}.zarr", work / name, scheduler="sync")
            best[mode] = min(best[mode], time.perf_counter() - start)
            shutil.rmtree(work / f"{name}.zarr")
    os.environ.pop("MSCL_FSYNC")
    results["stage_sync_fsync_on_fps"] = round(frames / best["on"], 1)
    results["stage_sync_fsync_off_fps"] = round(frames / best["off"], 1)
    results["fsync_cost_s_per_video"] = round((best["on"] - best["off"]) / args.videos, 4)
    results["fsync_cost_percent"] = round(100 * (best["on"] / best["off"] - 1), 1)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
