"""The training loader: clips/s, against decoding on the fly, and whether it slows a training step.

    python bench/loader.py [--videos N] [--batch B] [--steps K]

On demo videos (170x128 stored, 48 frames, 8-frame clips at stride 4, 112x112 crops, the default
augmentations) and in one run:
- clips/s of MSCLClips through ClipLoader with 0, 1 and 2 workers: each clip is two views of RGB,
  aligned flow and rotated flow;
- clips/s of the decode-on-the-fly baseline, as torchvision's VideoClips or PyTorchVideo load video:
  FFmpeg decodes each view's frames from the source file per sample (seek, decode, scale), then the
  same RGB crop, flip and colour transforms; RGB only, no flow at all;
- the time of a training step (torchvision r3d_18 forward and backward on both views' RGB, SGD)
  fed by the loader (2 workers at low CPU priority, as the trainer runs them on CPU), over the same
  step fed by batches already in memory: the loader's
  cost to training, which must stay at or under 1.05;
- peak memory of the main process (resident) and of the workers (unique to them: a forked worker
  shares its parent's pages), and their growth from the first to the last tenth of two epochs;
- short epochs as the demo trains them (one sample per video, a few batches each, a cache of whole
  videos): clips/s over 6 epochs with 1 worker started afresh each epoch (DataLoader's default,
  every epoch re-reading every video into a cold cache) against 1 persistent worker (ClipLoader's).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from pathlib import Path

import ffmpeg
import numpy as np
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.data import synth  # noqa: E402
from pipeline.data.augment import ViewAugment  # noqa: E402
from pipeline.data.dataset import ClipLoader, MSCLClips, to_device  # noqa: E402
from pipeline.io.encode import encode_video  # noqa: E402
from pipeline.io.ffmpeg_binary import ffmpeg_exe, input_path  # noqa: E402
from pipeline.storage.tables import read_table  # noqa: E402
from schemas.params import DatasetParams, DecodeParams, FlowParams, ProbeParams, SampleParams  # noqa: E402
from stages import decode as decode_stage  # noqa: E402
from stages import flow as flow_stage  # noqa: E402
from stages import probe as probe_stage  # noqa: E402
from stages import sample as sample_stage  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent / "data" / "bench" / "loader"
LABELS = ["slide_horizontal", "slide_vertical", "rotate", "zoom_in", "zoom_out", "oscillate"]


class MemoryWatch:
    """Samples the resident memory of this process and of its children every 50 ms."""

    def __init__(self):
        self.main: list[int] = []
        self.workers: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.wait(0.05):
            self.main.append(me.memory_info().rss)
            total = 0
            for child in me.children(recursive=True):
                try:
                    # Unique set size: a forked worker shares the parent's pages, which RSS counts again.
                    total += child.memory_full_info().uss
                except psutil.Error:
                    pass
            self.workers.append(total)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def build(videos: int) -> Path:
    """Demo-like videos through probe, decode, flow (DIS: the method does not matter for loading)
    and sample. Returns the work folder."""
    shutil.rmtree(ROOT, ignore_errors=True)
    for k in range(videos):
        truth = synth.demo_scene(LABELS[k % len(LABELS)], 3000 + k, width=170, height=128, frames=48, fps=25, camera_motion=k % 2 == 1)
        encode_video(synth.render_frames(truth), ROOT / "videos" / f"v{k:03d}.mp4", fps=25, quality=12)
    work = ROOT / "work"
    probe_stage.run(ProbeParams(), ROOT / "videos", work / "manifest", scheduler="sync")
    decode_stage.run(DecodeParams(), work / "manifest", ROOT / "videos", work / "store.zarr", work / "decode", scheduler="sync")
    flow_stage.run(FlowParams(method="dis"), work / "decode", work / "store.zarr", work / "flow", scheduler="sync")
    sample_stage.run(SampleParams(), work / "flow", work / "store.zarr", work / "sample", scheduler="sync")
    return work


class DecodeOnTheFly(torch.utils.data.IterableDataset):
    """The baseline: per sample and view, FFmpeg seeks into the source video and decodes the clip's
    frames, scaled to the stored size; then the dataset's own RGB transforms."""

    def __init__(self, dataset: MSCLClips, sources: dict[str, tuple[str, int, int]], params: DatasetParams):
        self.dataset, self.sources, self.augment = dataset, sources, ViewAugment(params)

    def decode(self, video_id: str, start: int) -> torch.Tensor:
        path, width, height = self.sources[video_id]
        length, stride = self.dataset.index.clip_len, self.dataset.index.stride
        stream = ffmpeg.input(input_path(path), ss=start / 25.0).filter("select", f"not(mod(n,{stride}))")
        stream = stream.filter("scale", width, height).output("pipe:", format="rawvideo", pix_fmt="rgb24", vframes=length, fps_mode="passthrough")
        out, _ = stream.global_args("-hide_banner", "-nostdin", "-loglevel", "error").run(cmd=ffmpeg_exe(), capture_stdout=True)
        frames = np.frombuffer(out, np.uint8).reshape(-1, height, width, 3)
        assert len(frames) == length, (path, start, len(frames))
        return torch.from_numpy(frames.copy()).permute(0, 3, 1, 2)

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        items, _ = self.dataset.plan(0)
        if worker is not None:
            items = items[worker.id :: worker.num_workers]
        for item in items:
            video_id, starts, _, seeds = self.dataset.draw(int(item))  # the same clips as the dataset's
            views = []
            for start, seed in zip(starts, seeds, strict=True):
                rgb = self.decode(video_id, start)
                flow = torch.zeros(rgb.shape[0], 2, *rgb.shape[2:], dtype=torch.float16)  # the transforms' signature; unused
                views.append(self.augment(rgb, flow, seed)[0].permute(1, 0, 2, 3))
            yield {"rgb": torch.stack(views)}


def clips_per_second(make_loader, epochs: int = 1) -> tuple[float, dict[str, float]]:
    loader = make_loader()
    clips = 0
    with MemoryWatch() as memory:
        start = time.perf_counter()
        for _ in range(epochs):
            for batch in loader:
                clips += len(batch["rgb"])
        elapsed = time.perf_counter() - start
    main, workers = np.array(memory.main or [0]), np.array(memory.workers or [0])
    tenth = max(1, len(main) // 10)
    mem = {
        "peak_main_mib": round(main.max() / 2**20, 1),
        "peak_workers_mib": round(workers.max() / 2**20, 1),
        # Growth from the first tenth of the run to its last tenth: flat memory is ~0.
        "growth_main_mib": round((np.median(main[-tenth:]) - np.median(main[:tenth])) / 2**20, 1),
        "growth_workers_mib": round((np.median(workers[-tenth:]) - np.median(workers[:tenth])) / 2**20, 1),
    }
    return clips / elapsed, mem


def training_step_ratio(dataset: MSCLClips, batch: int, steps: int) -> dict[str, float]:
    """Seconds per step fed by the loader (2 workers) over seconds per step fed from memory."""
    from torchvision.models.video import r3d_18

    torch.manual_seed(0)
    model = r3d_18(num_classes=128)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(data):
        data = to_device(data, "cpu")
        rgb = data["rgb"]
        loss = model(rgb[:, 0]).square().mean() + model(rgb[:, 1]).square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    loader = ClipLoader(dataset, batch, num_workers=2, worker_nice=10)  # as the trainer runs it on CPU
    cached = []
    for data in loader:
        cached.append(data)
        if len(cached) == steps + 1:
            break
    step(cached[0])  # warm-up
    start = time.perf_counter()
    for data in cached[1:]:
        step(data)
    in_memory = (time.perf_counter() - start) / steps

    dataset.set_epoch(dataset.epoch + 1)
    done, start = -1, 0.0
    for data in ClipLoader(dataset, batch, num_workers=2, worker_nice=10):
        if done == 0:
            start = time.perf_counter()  # after one step: workers started, queues full
        step(data)
        done += 1
        if done == steps:
            break
    fed = (time.perf_counter() - start) / steps
    return {"step_s_in_memory": round(in_memory, 3), "step_s_loader": round(fed, 3), "step_loader_over_in_memory": round(fed / in_memory, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="training steps timed per feeding")
    args = parser.parse_args()
    work = build(args.videos)
    params = DatasetParams(epoch="per_clip")  # every selected clip: epochs long enough to time
    make_dataset = lambda: MSCLClips(work / "sample" / "clips.parquet", work / "store.zarr", "dis", params)  # noqa: E731
    dataset = make_dataset()
    results: dict[str, object] = {"videos": args.videos, "clips_per_epoch": dataset.epoch_length, "batch": args.batch,
                                  "crop": params.crop_size, "clip": f"{dataset.index.clip_len}x{dataset.index.stride}"}  # fmt: skip
    for workers in (0, 1, 2):
        rate, memory = clips_per_second(lambda w=workers: ClipLoader(make_dataset(), args.batch, num_workers=w), epochs=2)
        results[f"dataset_{workers}_workers_clips_per_s"] = round(rate, 1)
        results[f"dataset_{workers}_workers_memory"] = memory

    sources = {}
    for row in read_table(work / "decode" / "decoded.parquet").to_pylist():
        sources[row["video_id"]] = (str(ROOT / "videos" / row["relpath"]), row["width"], row["height"])
    for workers in (0, 2):
        baseline = DecodeOnTheFly(make_dataset(), sources, params)
        rate, _ = clips_per_second(lambda w=workers, b=baseline: torch.utils.data.DataLoader(b, args.batch, num_workers=w))
        results[f"decode_on_the_fly_{workers}_workers_clips_per_s"] = round(rate, 1)
    for workers in (0, 2):
        results[f"dataset_vs_decode_on_the_fly_{workers}_workers"] = round(
            results[f"dataset_{workers}_workers_clips_per_s"] / results[f"decode_on_the_fly_{workers}_workers_clips_per_s"], 2
        )
    short = params.model_copy(update={"epoch": "per_video", "cache_mb": 512})
    for name, persistent in (("respawned", False), ("persistent", True)):
        make = lambda keep=persistent: ClipLoader(MSCLClips(work / "sample" / "clips.parquet", work / "store.zarr", "dis", short),  # noqa: E731
                                                  args.batch, num_workers=1, persistent_workers=keep)  # fmt: skip
        results[f"short_epochs_{name}_worker_clips_per_s"] = round(clips_per_second(make, epochs=6)[0], 1)
    results["short_epochs_persistent_over_respawned"] = round(
        results["short_epochs_persistent_worker_clips_per_s"] / results["short_epochs_respawned_worker_clips_per_s"], 2
    )
    results.update(training_step_ratio(make_dataset(), args.batch, args.steps))
    shutil.rmtree(ROOT, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
