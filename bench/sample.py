"""Sampling cost against flow cost: Motion Differential Sampling must be negligible next to flow.

    python bench/sample.py [--videos N] [--frames F]

On the same decoded demo-like videos (170x128) and in one run: pairs/s of the flow stage (TV-L1,
OpenCV defaults, one worker), flow frames/s of the sample stage scoring them from the stored flow
(one worker, cold: per-frame scores computed), and of a re-run with another threshold (warm: the
per-frame scores reused, only clip selection). The ratios say how many times cheaper sampling is.
Also a plain per-frame loop of the same MDS maths in numpy/OpenCV, for the vectorised code's speed.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.data import synth  # noqa: E402
from pipeline.io.encode import encode_video  # noqa: E402
from pipeline.storage import store  # noqa: E402
from pipeline.storage.tables import read_table  # noqa: E402
from schemas.params import DecodeParams, FlowParams, ProbeParams, SampleParams  # noqa: E402
from stages import decode as decode_stage  # noqa: E402
from stages import flow as flow_stage  # noqa: E402
from stages import probe as probe_stage  # noqa: E402
from stages import sample as sample_stage  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent / "data" / "bench" / "sample"
LABELS = ["slide_horizontal", "rotate", "zoom_in", "oscillate"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=40)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_mds import reference_scores  # the plain loop: the formula, one frame at a time

    videos = ROOT / "videos"
    shutil.rmtree(ROOT, ignore_errors=True)
    for k in range(args.videos):
        truth = synth.demo_scene(LABELS[k % 4], 2000 + k, width=170, height=128, frames=args.frames, fps=25, camera_motion=True)
        encode_video(synth.render_frames(truth), videos / f"v{k:03d}.mp4", fps=25, quality=12)
    work = ROOT / "work"
    probe_stage.run(ProbeParams(), videos, work / "manifest", scheduler="sync")
    decode_stage.run(DecodeParams(), work / "manifest", videos, work / "store.zarr", work / "decode", scheduler="sync")
    results: dict[str, object] = {"videos": args.videos, "size": "170x128"}

    start = time.perf_counter()
    flow_stage.run(FlowParams(), work / "decode", work / "store.zarr", work / "flow", workers=1)
    pairs = sum(r["num_pairs"] for r in read_table(work / "flow" / "videos.parquet").to_pylist())
    results["flow_pairs"] = pairs
    results["flow_tvl1_1_worker_pairs_per_s"] = round(pairs / (time.perf_counter() - start), 2)

    for label, params in (("cold", SampleParams()), ("warm_new_threshold", SampleParams(threshold="top_k", top_k=3))):
        start = time.perf_counter()
        sample_stage.run(params, work / "flow", work / "store.zarr", work / "sample", workers=1)
        rate = pairs / (time.perf_counter() - start)
        results[f"sample_{label}_1_worker_frames_per_s"] = round(rate, 1)
        results[f"sample_{label}_vs_flow"] = round(rate / results["flow_tvl1_1_worker_pairs_per_s"], 1)

    flows = [np.asarray(store.open_flow(work / "store.zarr", "tvl1", r["video_id"])[:], np.float32)
             for r in read_table(work / "flow" / "videos.parquet").to_pylist()]  # fmt: skip
    start = time.perf_counter()
    for flow in flows:
        reference_scores(flow)
    plain = pairs / (time.perf_counter() - start)
    from pipeline.sampling.mds import frame_scores

    start = time.perf_counter()
    for flow in flows:
        frame_scores(flow)
    vectorised = pairs / (time.perf_counter() - start)
    results["mds_plain_loop_frames_per_s"] = round(plain, 1)
    results["mds_vectorised_frames_per_s"] = round(vectorised, 1)
    results["mds_vectorised_vs_plain_loop"] = round(vectorised / plain, 1)
    # Scoring alone, without the stage's fixed start-up (local cluster, torch import in the worker):
    results["mds_vectorised_vs_flow"] = round(vectorised / results["flow_tvl1_1_worker_pairs_per_s"], 1)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
