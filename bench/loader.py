"""The training loader: where a worker's time goes, today's per-sample path against the loader that
only reads, and what feeds a step.

    python bench/loader.py [--videos N] [--batch B] [--samples K] [--workers W] [--gpu-batch 128]

On demo videos (170x128 stored, 48 frames, 8-frame clips at stride 4, the paper's 112x112 crops,
every sample two views of RGB, flow and rotated flow), in one run:

- **A worker's CPU time per sample** (process time, which counts zarr's decoding threads too), in
  process on one torch thread, split into read (fetching chunks, zarr's machinery where it reads,
  copies, the fixed-point flow's conversion), decode (the JPEG, zstd and blosc decoders and the
  CRC32C checks), augment, and batch (collate). Four paths over the same items: `today`, the worker
  before issue 24 (frames stored as 8-frame JPEG strips, read through zarr, every augmentation view
  by view with torchvision, then collate); `per_sample`, the same augmentation reading the store as
  it is now (one JPEG frame per chunk, shard files read directly by `ChunkReader`); `reads_only`,
  what a worker does now (read, draw the augmentation's numbers, batch the stored-size clips); and
  `cpu_pass`, the batched augmentation of those batches on the CPU (what a machine without a GPU
  adds in the main process). For the paper's augmentation (`DatasetParams` defaults: colour jitter
  0.8, grayscale 0.2, blur 0.5) and the demo's (params.yaml: no colour, camera pan removed);
  reading every clip from the store (`cache_mb: 0`) and from the cache of whole videos (512 MB,
  warm). The targets: `worker_cpu_reads_only_over_today` at most 1/3, `whole_path_cpu_over_today`
  at most 1.
- **Whole loaders on the CPU**: clips/s through `DeviceFeed(ClipLoader(...), "cpu")` with 0 and
  `--workers` workers, against the decode-on-the-fly baseline (FFmpeg seeks into the source and
  decodes each view's frames per sample, as torchvision's `VideoClips` or PyTorchVideo, then the
  same RGB augmentation; no flow at all).
- **Epoch boundaries**: short per-video epochs (12 videos, batch 8: two batches an epoch) through
  one worker, the loader's stream running on from epoch to epoch against a stream restarted each
  epoch (a DataLoader pass per epoch, its worker idle at each end and its cache lost).
- **The trainer** (on CUDA where present, or on `--device`): its own step (`pipeline.trainer`) at
  the paper's scale (r3d_18, flow encoder at 0.25 width, batch `--train-batch`, float16 on CUDA)
  for MSCL and RGB-only, fed from device memory (one batch over and over), by its loader
  (`--workers`, every clip from the store, augmented on the device) and by the loader before
  issue 24 (per-sample augmentation in the workers). `--store` takes a work folder made by
  `--build-only` (carried to a GPU machine without FFmpeg).

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

import ffmpeg
import numpy as np
import torch
from torch.utils.data import default_collate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.data import synth  # noqa: E402
from pipeline.data.augment import ViewAugment, rotate_vectors  # noqa: E402
from pipeline.data.batch_augment import augment_batch  # noqa: E402
from pipeline.data.dataset import ClipLoader, MSCLClips, collate_raw  # noqa: E402
from pipeline.data.feed import DeviceFeed  # noqa: E402
from pipeline.io.encode import encode_video  # noqa: E402
from pipeline.io.ffmpeg_binary import ffmpeg_exe, input_path  # noqa: E402
from pipeline.storage.codecs import ImageCodec  # noqa: E402
from pipeline.storage.store import ChunkReader  # noqa: E402
from pipeline.storage.tables import read_table  # noqa: E402
from schemas import store as layout  # noqa: E402
from schemas.params import DatasetParams, DecodeParams, FlowParams, ProbeParams, SampleParams, load_params  # noqa: E402
from stages import decode as decode_stage  # noqa: E402
from stages import flow as flow_stage  # noqa: E402
from stages import probe as probe_stage  # noqa: E402
from stages import sample as sample_stage  # noqa: E402
from train_step import PAPER_MODEL  # noqa: E402  (bench/, this script's folder)

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "data" / "bench" / "loader"
LABELS = ["slide_horizontal", "slide_vertical", "rotate", "zoom_in", "zoom_out", "oscillate"]


def build(videos: int, root: Path, today: bool = True) -> Path:
    """Demo-like videos through probe, decode (JPEG q90 frames) and flow (DIS, 1/32 px fixed point:
    the DAG's store; the method does not matter for loading), then sample. Returns the work folder."""
    shutil.rmtree(root, ignore_errors=True)
    for k in range(videos):
        truth = synth.demo_scene(LABELS[k % len(LABELS)], 3000 + k, width=170, height=128, frames=48, fps=25, camera_motion=k % 2 == 1)
        encode_video(synth.render_frames(truth), root / "videos" / f"v{k:03d}.mp4", fps=25, quality=12)
    work = root / "work"
    probe_stage.run(ProbeParams(), root / "videos", work / "manifest", scheduler="sync")
    decode_stage.run(DecodeParams(codec="jpeg", quality=90), work / "manifest", root / "videos", work / "store.zarr", work / "decode", scheduler="sync")
    flow_stage.run(FlowParams(method="dis", precision=1 / 32), work / "decode", work / "store.zarr", work / "flow", scheduler="sync")
    sample_stage.run(SampleParams(), work / "flow", work / "store.zarr", work / "sample", scheduler="sync")
    if not today:
        return work
    with jpeg_strips():  # the store as it was before: the same pixels, 8 frames a JPEG chunk
        decode_stage.run(DecodeParams(codec="jpeg", quality=90), work / "manifest", root / "videos", work / "today.zarr",
                         work / "decode_today", scheduler="sync")  # fmt: skip
    (work / "today.zarr" / "flow").symlink_to(work / "store.zarr" / "flow")
    return work


@contextlib.contextmanager
def jpeg_strips():
    """Frames written as before issue 24: JPEG chunks of 8 frames in one image (each frame decodes
    to the same pixels as alone), which a strided clip reads whole."""
    original = layout.frames_chunks
    layout.frames_chunks = lambda height, width, chunk_frames, codec: (8, height, width, 3)
    try:
        yield
    finally:
        layout.frames_chunks = original


@contextlib.contextmanager
def through_zarr():
    """Arrays opened meanwhile are read through zarr, as before `ChunkReader`."""
    original = ChunkReader.of
    ChunkReader.of = classmethod(lambda cls, array: None)
    try:
        yield
    finally:
        ChunkReader.of = original


# -- a worker's CPU time ----------------------------------------------------------------------------


class DecodeClock:
    """Thread CPU seconds spent checking and decoding the store's chunks (wrapped while in use): the
    JPEG, zstd and blosc decoders and the CRC32C checks, whether `ChunkReader` reads the shard files
    or zarr does (in its threads, so each call times itself)."""

    def __init__(self):
        self.seconds = 0.0
        self._patched: list[tuple[type, str, object]] = []

    def __enter__(self):
        from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

        for cls, name in ((ChunkReader, "unpack"), *((c, "_decode_sync") for c in (ImageCodec, BloscCodec, Crc32cCodec, ZstdCodec))):
            original = getattr(cls, name)
            self._patched.append((cls, name, original))
            setattr(cls, name, self._timed(original))
        return self

    def _timed(self, function):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.thread_time() - started

        return timed

    def __exit__(self, *exc):
        for cls, name, original in self._patched:
            setattr(cls, name, original)


def timed_read(read, dataset: MSCLClips, item: int, clock: DecodeClock, parts: dict):
    """A sample's draw and its views read by `read`, the CPU time split into decode and the rest."""
    cpu, decoded = time.process_time(), clock.seconds
    video_id, starts, angle, seeds = dataset.draw(item)
    views = read(video_id, starts)
    decode = clock.seconds - decoded
    parts["decode"] += decode
    parts["read"] += time.process_time() - cpu - decode
    return video_id, starts, angle, seeds, views


def augmented_sample(augment: ViewAugment, views, seeds, angle: float, video_id: str) -> dict:
    """A sample as the loader before issue 24 made it in its workers: each view augmented with
    torchvision, the flow rotated, flow sent as float16."""
    rgbs, flows = [], []
    for (rgb, flow), seed in zip(views, seeds, strict=True):
        rgb, flow, _ = augment(rgb, flow, seed)
        rgbs.append(rgb.permute(1, 0, 2, 3))
        if flow is not None:
            flows.append(flow.permute(1, 0, 2, 3))
    sample = {"rgb": torch.stack(rgbs), "video_id": video_id}
    if flows:
        flow = torch.stack(flows)
        sample["flow"] = flow.half()
        sample["flow_rot"] = rotate_vectors(flow.transpose(1, 2), angle).transpose(1, 2).half()
    return sample


def per_sample_worker(dataset: MSCLClips, augment: ViewAugment, items, clock: DecodeClock, parts: dict) -> dict:
    """A batch as a worker made it before the batched pass: per sample, read both views, augment
    each with torchvision view by view, rotate the flow; then collate the samples."""
    samples = []
    for item in items:
        video_id, starts, angle, seeds, views = timed_read(dataset.read_views, dataset, item, clock, parts)
        cpu = time.process_time()
        samples.append(augmented_sample(augment, views, seeds, angle, video_id))
        parts["augment"] += time.process_time() - cpu
    cpu = time.process_time()
    batch = default_collate(samples)
    parts["batch"] += time.process_time() - cpu
    return batch


def reads_only_worker(dataset: MSCLClips, items, clock: DecodeClock, parts: dict) -> dict:
    """A batch as a worker makes it now: per sample, read both views at the stored size and draw
    the augmentation's numbers (`raw_sample`, in its two steps); then batch them."""
    samples = []
    for item in items:
        video_id, starts, angle, seeds, views = timed_read(dataset._read_stored, dataset, item, clock, parts)
        cpu = time.process_time()
        samples.append(dataset.pack(views, video_id, starts, angle, seeds, item, 0, False))
        parts["augment"] += time.process_time() - cpu  # the draws
    cpu = time.process_time()
    batch = collate_raw(samples)
    parts["batch"] += time.process_time() - cpu
    return batch


def worker_times(work: Path, params: DatasetParams, samples: int, batch: int) -> dict:
    """Milliseconds of CPU per sample for each path, and clips/s of one worker."""
    torch.set_num_threads(1)
    out = {}
    with DecodeClock() as clock:
        for path in ("today", "per_sample", "reads_only"):
            store = "today.zarr" if path == "today" else "store.zarr"  # today: 8-frame strips, read through zarr
            dataset = MSCLClips(work / "sample" / "clips.parquet", work / store, "dis", params)
            reading = through_zarr() if path == "today" else contextlib.nullcontext()
            reading.__enter__()
            items = [i % dataset.num_items for i in range(samples)]
            augment = ViewAugment(params)
            if params.cache_mb:  # warm: every video already in the cache
                for item in range(dataset.num_items):
                    dataset.read_views(*dataset.draw(item)[:2])
            parts: dict = defaultdict(float)
            raws = []
            for lo in range(0, samples, batch):
                chunk = items[lo : lo + batch]
                if path == "reads_only":
                    raws.append(reads_only_worker(dataset, chunk, clock, parts))
                else:
                    per_sample_worker(dataset, augment, chunk, clock, parts)
            reading.__exit__(None, None, None)
            ms = {k: round(1000 * v / samples, 2) for k, v in parts.items()}
            ms["total"] = round(sum(ms.values()), 2)
            out[path] = ms
            if path == "reads_only":
                cpu = time.process_time()
                for raw in raws:
                    augment_batch(raw, params)
                out["cpu_pass"] = {"augment": round(1000 * (time.process_time() - cpu) / samples, 2)}
    today, now = out["today"]["total"], out["reads_only"]["total"]
    out["worker_clips_per_s"] = {path: round(1000 / out[path]["total"], 1) for path in ("today", "per_sample", "reads_only")}
    out["worker_cpu_reads_only_over_today"] = round(now / today, 3)
    out["whole_path_cpu_over_today"] = round((now + out["cpu_pass"]["augment"]) / today, 3)
    return out


# -- whole loaders ----------------------------------------------------------------------------------


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
                views.append(self.augment(rgb, None, seed)[0].permute(1, 0, 2, 3))
            yield {"rgb": torch.stack(views)}


def clips_per_second(batches) -> float:
    started, clips = time.perf_counter(), 0
    for batch in batches:
        clips += len(batch["rgb"])
    return clips / (time.perf_counter() - started)


def loaders(work: Path, root: Path, params: DatasetParams, batch: int, workers: int) -> dict:
    torch.set_num_threads(2)
    out = {}
    make = lambda: MSCLClips(work / "sample" / "clips.parquet", work / "store.zarr", "dis", params)  # noqa: E731
    for n in (0, workers):
        out[f"loader_{n}_workers_clips_per_s"] = round(clips_per_second(DeviceFeed(ClipLoader(make(), batch, num_workers=n), "cpu")), 1)
    sources = {}
    for row in read_table(work / "decode" / "decoded.parquet").to_pylist():
        sources[row["video_id"]] = (str(root / "videos" / row["relpath"]), row["width"], row["height"])
    for n in (0, workers):
        baseline = torch.utils.data.DataLoader(DecodeOnTheFly(make(), sources, params), batch, num_workers=n)
        out[f"decode_on_the_fly_{n}_workers_clips_per_s"] = round(clips_per_second(baseline), 1)
        out[f"loader_over_decode_on_the_fly_{n}_workers"] = round(
            out[f"loader_{n}_workers_clips_per_s"] / out[f"decode_on_the_fly_{n}_workers_clips_per_s"], 2)
    return out


def epoch_boundaries(work: Path, params: DatasetParams, batch: int, epochs: int = 6) -> dict:
    """Short per-video epochs through one worker: one stream across epochs against a new one each."""
    short = params.model_copy(update={"epoch": "per_video", "cache_mb": 512})
    out = {}
    for name, restart in (("restarted_each_epoch", True), ("one_stream", False)):
        loader = ClipLoader(MSCLClips(work / "sample" / "clips.parquet", work / "store.zarr", "dis", short), batch, num_workers=1)
        feed = DeviceFeed(loader, "cpu")
        started, clips = time.perf_counter(), 0
        for _ in range(epochs):
            for data in feed:
                clips += len(data["rgb"])
            if restart:
                loader.close()
        out[f"short_epochs_{name}_clips_per_s"] = round(clips / (time.perf_counter() - started), 1)
        loader.close()
    out["short_epochs_one_stream_over_restarted"] = round(out["short_epochs_one_stream_clips_per_s"] / out["short_epochs_restarted_each_epoch_clips_per_s"], 2)
    return out


# -- the trainer on the device --------------------------------------------------------------------


class TodayClips(torch.utils.data.IterableDataset):
    """The loader before issue 24, for the "today" arm: every worker reads and augments each
    sample on its own (read, torchvision view by view, FRA), the DataLoader collates dicts of
    samples, and the trainer moves them to the device (`to_device`). Epoch after epoch."""

    def __init__(self, dataset: MSCLClips):
        self.dataset, self.augment = dataset, ViewAugment(dataset.params)

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        epoch = 0
        while True:
            items, _ = self.dataset.plan(epoch)
            if worker is not None:
                items = items[worker.id :: worker.num_workers]
            for item in items:
                video_id, starts, angle, seeds = self.dataset.draw(int(item), epoch=epoch)
                yield augmented_sample(self.augment, self.dataset.read_views(video_id, starts), seeds, angle, video_id)
            epoch += 1


def feeding(work: Path, params: DatasetParams, device: str, batch: int, workers: int, steps: int, scale: str) -> dict:
    """The trainer's own step (`pipeline.trainer`: its model, optimiser, float16 autocast and
    scaler on CUDA, gradient clipping, losses read every `log_every` steps) fed three ways: one
    batch over and over from device memory; by its own loader (`ClipLoader` + `DeviceFeed`, every
    clip from the store); and by the loader before issue 24 (`TodayClips`)."""
    from pipeline import trainer
    from pipeline.data.dataset import to_device

    train = load_params(ROOT / "params.yaml").train
    if scale == "paper":  # the paper's RGB encoder and batch, the flow encoder at a quarter width
        train = train.model_copy(update=PAPER_MODEL)
    train = train.model_copy(update={"batch_size": batch, "num_workers": workers, "device": device, "epochs": 10_000})
    params = params.model_copy(update={"cache_mb": 0, "epoch": "per_clip"})
    out = {"device": device, "batch": batch, "workers": workers, "steps": steps, "scale": scale}
    for method in ("mscl", "rgb_only"):
        run = trainer._build(train, params, method, work / "sample" / "clips.parquet", work / "store.zarr", "dis")
        run.model.train()

        def endless(feed):
            while True:
                yield from feed

        def timed(run, batches) -> float:
            for i in range(steps + 3):
                trainer._step(run, train, next(batches), 0)
                if run.step % train.log_every == 0:
                    trainer.read_losses(run)
                if i == 2:
                    if run.device.type == "cuda":
                        torch.cuda.synchronize()
                    started = time.perf_counter()
            trainer.read_losses(run)
            if run.device.type == "cuda":
                torch.cuda.synchronize()
            return batch * steps / (time.perf_counter() - started)

        fed = endless(run.feed)
        first = next(fed)
        row = {"memory_clips_per_s": timed(run, iter(lambda: first, None)), "loader_clips_per_s": timed(run, fed)}
        run.feed.close()
        today = TodayClips(MSCLClips(work / "sample" / "clips.parquet", work / "store.zarr", "dis", run.dataset.params,
                                     with_flow=method == "mscl"))  # fmt: skip
        loader = torch.utils.data.DataLoader(today, batch, num_workers=workers, pin_memory=run.device.type == "cuda",
                                             drop_last=True, persistent_workers=workers > 0)  # fmt: skip
        row["today_loader_clips_per_s"] = timed(run, (to_device(b, run.device) for b in loader))
        row = {k: round(v, 1) for k, v in row.items()}
        row["loader_over_memory"] = round(row["loader_clips_per_s"] / row["memory_clips_per_s"], 3)
        row["today_over_memory"] = round(row["today_loader_clips_per_s"] / row["memory_clips_per_s"], 3)
        out[method] = row
        print(json.dumps({method: row}), file=sys.stderr, flush=True)  # kept in the log should a later part be cut off
        del loader, run
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--samples", type=int, default=96, help="samples timed per path and setting")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=WORK, help="work folder (removed at the end)")
    parser.add_argument("--parts", nargs="+", default=["workers", "loaders", "epochs", "train"],
                        choices=["workers", "loaders", "epochs", "train"], help="what to measure (train: where CUDA is, or on --device)")  # fmt: skip
    parser.add_argument("--store", type=Path, default=None, help="a work folder from --build-only (kept): no FFmpeg needed for train")
    parser.add_argument("--build-only", action="store_true", help="build the work folder at --out and keep it (to carry to a GPU)")
    parser.add_argument("--device", default=None, help="the trainer's device for train (default: cuda where present)")
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--scale", choices=["paper", "params"], default="paper", help="train's model: the paper's, or params.yaml's")
    args = parser.parse_args()
    if args.build_only:
        build(args.videos, args.out, today=False)
        return
    work = args.store or build(args.videos, args.out)
    if "workers" in args.parts and not (work / "today.zarr").exists():
        parser.error(f"--parts workers needs {work / 'today.zarr'} (the store before issue 24), which --build-only leaves out")
    demo = load_params(ROOT / "params.yaml").dataset.model_copy(update={"crop_size": 112, "rotation": True, "epoch": "per_clip"})
    paper = DatasetParams(rotation=True, epoch="per_clip")
    results: dict = {"videos": len(read_table(work / "decode" / "decoded.parquet")), "crop": 112, "clip": "8x4", "batch": args.batch}
    for name, params in (("paper_augmentation", paper), ("demo_augmentation", demo)) if "workers" in args.parts else ():
        for cache in (0, 512):
            results[f"{name}_cache_{cache}"] = worker_times(work, params.model_copy(update={"cache_mb": cache}), args.samples, args.batch)
    if "loaders" in args.parts:
        results.update(loaders(work, args.out, paper.model_copy(update={"cache_mb": 0}), args.batch, args.workers))
    if "epochs" in args.parts:
        results.update(epoch_boundaries(work, paper, args.batch))
    device = args.device or ("cuda" if torch.cuda.is_available() else None)
    if "train" in args.parts and device:
        results["train"] = feeding(work, paper, device, args.train_batch, args.workers, args.train_steps, args.scale)
    if args.store is None:
        shutil.rmtree(args.out, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
