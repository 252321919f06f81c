"""Flow throughput and accuracy: the flow stage against a plain OpenCV loop and an mmaction2-style
extractor, all on the same frames, in one run.

    python bench/flow.py [--videos N] [--frames F] [--workers W]

Inputs: N synthetic demo videos (170x128 H.264, ground truth known), probed and decoded by the
pipeline beforehand (not timed). Measured, in pairs per second:
  - plain_loop: one process calling cv2.optflow DualTVL1 (OpenCV defaults) on consecutive frames;
  - mmaction2_style: what users run today: cv2.VideoCapture decode, TV-L1, clip to +-20 px, write
    the x and y flow of every pair as JPEG files;
  - stage_tvl1_1_worker / _W_workers: `extract-flow` with method tvl1 (cluster start-up included);
  - stage_tvl1_fast_1_worker / _W_workers: the same with the speed preset.
Accuracy: mean end-point error (px) of tvl1 and tvl1_fast against the ground truth, away from
borders and occlusions. Where CUDA is (or with `--raft yes`): RAFT large and small alone at
batches of 8 to 64 frame pairs, and the flow stage with each at its default batch, as a ratio of
the estimator's best rate. `--store DIR` runs only that, on a work folder of
`bench/loader.py --build-only` (a GPU machine has no FFmpeg). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.data import synth  # noqa: E402
from pipeline.io.encode import encode_video  # noqa: E402
from pipeline.parallel import default_workers  # noqa: E402
from pipeline.storage import store  # noqa: E402
from pipeline.storage.tables import read_table  # noqa: E402
from schemas.params import DecodeParams, FlowParams, ProbeParams  # noqa: E402
from stages import decode as decode_stage  # noqa: E402
from stages import flow as flow_stage  # noqa: E402
from stages import probe as probe_stage  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent / "data" / "bench" / "flow"
LABELS = ["slide_horizontal", "rotate", "zoom_in", "oscillate", "slide_vertical", "zoom_out"]


def make_inputs(count: int, frames: int) -> tuple[Path, dict[str, synth.SceneTruth]]:
    videos = ROOT / f"videos_{count}x{frames}"
    truths = {}
    for k in range(count):
        truth = synth.demo_scene(LABELS[k % len(LABELS)], 1000 + k, width=170, height=128, frames=frames, fps=25, camera_motion=k % 2 == 0)
        path = videos / f"v{k:03d}.mp4"
        if not path.exists():
            encode_video(synth.render_frames(truth), path, fps=25, quality=12)
        truths[f"v{k:03d}.mp4"] = truth
    return videos, truths


def plain_loop(frame_arrays: list[np.ndarray]) -> int:
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
    pairs = 0
    for frames in frame_arrays:
        gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
        for i in range(len(gray) - 1):
            tvl1.calc(gray[i], gray[i + 1], None)
            pairs += 1
    return pairs


def mmaction2_style(videos: list[Path], out: Path) -> int:
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
    pairs = 0
    for path in videos:
        capture = cv2.VideoCapture(str(path))
        ok, previous = capture.read()
        previous = cv2.cvtColor(previous, cv2.COLOR_BGR2GRAY)
        folder = out / path.stem
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            flow = tvl1.calc(previous, gray, None)
            scaled = np.round((np.clip(flow, -20, 20) + 20) * (255 / 40)).astype(np.uint8)
            cv2.imwrite(str(folder / f"x_{pairs:05d}.jpg"), scaled[..., 0])
            cv2.imwrite(str(folder / f"y_{pairs:05d}.jpg"), scaled[..., 1])
            previous, pairs = gray, pairs + 1
        capture.release()
    return pairs


def epe(store_path: Path, method: str, rows: list[dict], truths: dict[str, synth.SceneTruth]) -> float:
    errors = []
    for row in rows:
        truth = truths[row["relpath"]]
        flow = np.asarray(store.open_flow(store_path, method, row["video_id"])[:], np.float32)
        for t in range(len(flow)):
            gt, valid = synth.truth_flow(truth, t)
            valid[:8], valid[-8:], valid[:, :8], valid[:, -8:] = False, False, False, False
            errors.append(np.linalg.norm(flow[t] - gt, axis=-1)[valid])
    return round(float(np.concatenate(errors).mean()), 4)


def raft(work: Path, rows: list[dict], device: str, batches: list[int], workers: int, iterations: int,
         decoded: Path | None = None) -> dict:  # fmt: skip
    """RAFT (large and small) on `device`: the estimator alone over every video's frames at each
    batch size, then the flow stage at its default batch (on CUDA: one process holds the model, the
    frames read by threads ahead of it), as a ratio of the estimator's best rate. Random weights:
    the rate does not depend on them, and none are downloaded."""
    import torch
    from torchvision.models import optical_flow

    from pipeline.flow.estimators import RAFT, RAFTConfig

    frames = [store.open_frames(work / "store.zarr", row["video_id"])[:] for row in rows]
    pairs = sum(len(f) - 1 for f in frames)
    out: dict = {"device": device, "pairs": pairs, "iterations": iterations}
    for size in ("large", "small"):
        weights = work / f"raft_{size}_random.pth"
        torch.save(getattr(optical_flow, f"raft_{size}")(weights=None).state_dict(), weights)
        rates = {}
        for batch in batches:
            estimator = RAFT(RAFTConfig(size=size, weights=str(weights), iterations=iterations, batch_size=batch, device=device))
            estimator.estimate(frames[0][: batch + 1])  # warm-up: kernels chosen, memory allocated
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for video in frames:
                estimator.estimate(video)
            rates[batch] = pairs / (time.perf_counter() - start)
            out[f"raft_{size}_estimator_batch_{batch}_pairs_per_s"] = round(rates[batch], 1)
            print(json.dumps({f"raft_{size}_estimator_batch_{batch}_pairs_per_s": out[f"raft_{size}_estimator_batch_{batch}_pairs_per_s"]}),
                  file=sys.stderr, flush=True)  # fmt: skip
            del estimator
        params = FlowParams(method=f"raft_{size}", **{f"raft_{size}": {"weights": str(weights), "iterations": iterations, "device": device}})
        store_path = work / f"stage_raft_{size}.zarr"
        shutil.rmtree(store_path, ignore_errors=True)
        shutil.copytree(work / "store.zarr" / "frames", store_path / "frames")
        start = time.perf_counter()
        summary = flow_stage.run(params, decoded or work / "decode", store_path, work / f"stage_raft_{size}", workers=workers)
        seconds = time.perf_counter() - start
        assert summary.counts.get("computed") == len(rows), summary.text()
        best = max(rates.values())
        out[f"stage_raft_{size}_batch_{getattr(params, f'raft_{size}').batch_size}_pairs_per_s"] = round(pairs / seconds, 1)
        out[f"stage_raft_{size}_over_best_estimator"] = round(pairs / seconds / best, 3)
        print(json.dumps({f"stage_raft_{size}_over_best_estimator": out[f"stage_raft_{size}_over_best_estimator"]}), file=sys.stderr, flush=True)
        out[f"raft_{size}_best_batch"] = max(rates, key=rates.get)
        for made in (store_path, work / f"stage_raft_{size}", *work.glob(f"{store_path.name}.*")):  # .lock, .partial beside it
            shutil.rmtree(made, ignore_errors=True) if made.is_dir() else made.unlink(missing_ok=True)
        weights.unlink()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=13)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--raft", choices=["auto", "yes", "no"], default="auto", help="RAFT's section (auto: where CUDA is)")
    parser.add_argument("--raft-device", default="cuda")
    parser.add_argument("--raft-batches", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--raft-iterations", type=int, default=12)
    parser.add_argument("--raft-videos", type=int, default=None, help="with --store: only the first N videos")
    parser.add_argument("--store", type=Path, default=None,
                        help="RAFT alone on a work folder with decode/ and store.zarr/frames (bench/loader.py --build-only), kept")  # fmt: skip
    args = parser.parse_args()
    if args.store is not None:  # where there is no FFmpeg or TV-L1 (a GPU machine): RAFT on carried frames
        decoded = args.store / "decode"
        if args.raft_videos:  # the stage reads its videos from the decode table: a copy holding the first N
            import pyarrow.parquet as pq

            subset = args.store / f"decode_first_{args.raft_videos}"
            shutil.rmtree(subset, ignore_errors=True)
            shutil.copytree(decoded, subset)
            pq.write_table(pq.read_table(decoded / "decoded.parquet").slice(0, args.raft_videos), subset / "decoded.parquet")
            decoded = subset
        rows = read_table(decoded / "decoded.parquet").to_pylist()
        print(json.dumps(raft(args.store, rows, args.raft_device, args.raft_batches, args.workers, args.raft_iterations, decoded), indent=2))
        if args.raft_videos:
            shutil.rmtree(decoded, ignore_errors=True)
        return
    cv2.setNumThreads(1)  # the plain loop and the mmaction2-style baseline are single-process, single-thread

    videos, truths = make_inputs(args.videos, args.frames)
    work = ROOT / "work"
    shutil.rmtree(work, ignore_errors=True)
    probe_stage.run(ProbeParams(), videos, work / "manifest", scheduler="sync")
    decode_stage.run(DecodeParams(), work / "manifest", videos, work / "store.zarr", work / "decode", scheduler="sync")
    rows = read_table(work / "decode" / "decoded.parquet").to_pylist()
    frame_arrays = [store.open_frames(work / "store.zarr", row["video_id"])[:] for row in rows]
    pairs = sum(len(f) - 1 for f in frame_arrays)
    results: dict[str, object] = {"videos": args.videos, "pairs": pairs, "size": "170x128", "workers": args.workers, "cores": default_workers()}

    start = time.perf_counter()
    assert plain_loop(frame_arrays) == pairs
    results["plain_loop_pairs_per_s"] = round(pairs / (time.perf_counter() - start), 2)
    start = time.perf_counter()
    assert mmaction2_style(sorted(videos.glob("*.mp4")), work / "mmaction2") == pairs
    results["mmaction2_style_pairs_per_s"] = round(pairs / (time.perf_counter() - start), 2)

    for method in ("tvl1", "tvl1_fast"):
        for workers in (1, args.workers):
            name = f"stage_{method}_{workers}_worker{'s' if workers > 1 else ''}"
            store_path = work / f"{name}.zarr"
            shutil.copytree(work / "store.zarr" / "frames", store_path / "frames")
            start = time.perf_counter()
            summary = flow_stage.run(FlowParams(method=method), work / "decode", store_path, work / name, workers=workers)
            seconds = time.perf_counter() - start
            assert summary.counts.get("computed") == len(rows), summary.text()
            results[f"{name}_pairs_per_s"] = round(pairs / seconds, 2)
            results[f"{name}_vs_plain_loop"] = round(results[f"{name}_pairs_per_s"] / results["plain_loop_pairs_per_s"], 2)
            results[f"{name}_vs_mmaction2_style"] = round(results[f"{name}_pairs_per_s"] / results["mmaction2_style_pairs_per_s"], 2)
        results[f"{method}_epe_px"] = epe(store_path, method, rows, truths)
    results["tvl1_fast_speedup_vs_tvl1"] = round(
        results[f"stage_tvl1_fast_{args.workers}_workers_pairs_per_s"] / results[f"stage_tvl1_{args.workers}_workers_pairs_per_s"], 2
    )
    import torch

    if args.raft == "yes" or (args.raft == "auto" and torch.cuda.is_available()):
        results["raft"] = raft(work, rows, args.raft_device, args.raft_batches, args.workers, args.raft_iterations)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
