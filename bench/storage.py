"""Store size against what each codec costs: frames and flow options side by side, in one run.

    python bench/storage.py [--videos N] [--frames F] [--workers W]

On N demo videos (170x128 H.264, 25 fps, ground-truth motion known; half of them pan the camera),
probed and decoded lossless by the pipeline first (the reference). Every option is written through
the pipeline's own store code (`decode.codec`, `flow.precision`) and read back through its readers.

Frames, per option (lossless zstd, JPEG, JPEG XL, AVIF, WebP at several qualities; JPEG as
`decode.codec: jpeg` writes it, 4:4:4 with one frame per chunk, and as a reference libjpeg's
default 4:2:0, the first default) and for the baseline users keep today, JPEG rawframes (one
`img_%05d.jpg` per frame, written with OpenCV at q95 as mmaction2's and denseflow's tools do): bytes
per frame, encode and decode frames/s (one process; decode through plain zarr, as any zarr reader,
and through the pipeline's own reader), PSNR against the lossless frames. The flow stage decodes lossy-stored videos again from
the source, so a frame codec changes neither the flow nor MDS's selection; for JPEG q90 and q80 the
benchmark also computes TV-L1 from the stored frames (the stage's fallback without a videos root):
its end-point error against the ground truth, and the Jaccard overlap of MDS's selection with the
lossless frames'.
Flow, per option (float16 as stored today, fixed point at 1/64 to 1/8 px) and for mmaction2-style
flow JPEGs (clipped to +-20 px, 8 bits, x and y as two grey JPEGs at q95): bytes per pair, encode and
decode pairs/s, the largest added error and the added end-point error, and the Jaccard overlap of
MDS's selection with float16's, scored as the DAG does (`sample.flow_grid: 1/32`) and as stored.
Totals per frame (frames + flow) for every combination, against the targets (25 KB, 0.02 px,
Jaccard 0.98). Loader: MSCLClips clips/s in process, on the lossless store against the DAG's default
(JPEG q90, flow at 1/32 px), runs alternating, 3 repeats: through ClipLoader with every clip read
from the store, with its cache of whole videos, and the store reads alone (no augmentation); and
the lossless store read by the loader as it was before ("today" when the issue was filed): each
view seeded with torch.manual_seed, and each view read from the store on its own.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import zarr
from zarr.codecs import Crc32cCodec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.flow import epe, make_inputs  # noqa: E402
from pipeline.data import augment  # noqa: E402
from pipeline.data.dataset import ClipLoader, MSCLClips  # noqa: E402
from pipeline.data.feed import DeviceFeed  # noqa: E402
from pipeline.parallel import default_workers  # noqa: E402
from pipeline.storage import arrays, codecs, store  # noqa: E402
from pipeline.storage.tables import read_table  # noqa: E402
from schemas import store as layout  # noqa: E402
from schemas.params import DatasetParams, DecodeParams, FlowParams, ProbeParams, SampleParams  # noqa: E402
from stages import decode as decode_stage  # noqa: E402
from stages import flow as flow_stage  # noqa: E402
from stages import probe as probe_stage  # noqa: E402
from stages import sample as sample_stage  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent / "data" / "bench" / "storage"
FRAME_OPTIONS = [("zstd", 0), ("jpeg", 95), ("jpeg", 90), ("jpeg", 80), ("jpegxl", 90), ("jpegxl", 80), ("avif", 80), ("webp", 90)]
JPEG420 = ("jpeg420", 95)  # 4:2:0, one frame per chunk: the first default, kept as a reference row
FLOW_FROM_FRAMES = [("jpeg", 90), ("jpeg", 80)]  # flow computed from stored lossy frames (the fallback), to show its cost
FLOW_OPTIONS = [None, 1 / 64, 1 / 32, 1 / 16, 1 / 8]  # px; None: float16
MMACTION_BOUND = 20.0  # px: mmaction2's and denseflow's flow images clip here
TARGET_KB_PER_FRAME, TARGET_ADDED_FLOW_ERROR, TARGET_JACCARD = 25.0, 0.02, 0.98
GRID = 1 / 32  # sample.flow_grid in params.yaml
DEFAULT = "jpeg_q90+fixed_1/32"  # decode.codec, decode.quality and flow.precision in params.yaml


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return round(float(10 * np.log10(255**2 / mse)), 2) if mse else float("inf")


def selected(sample_dir: Path) -> set[tuple[str, int]]:
    rows = read_table(sample_dir / "clips.parquet").to_pylist()
    return {(row["video_id"], row["start"]) for row in rows if row["selected"]}


def jaccard(a: set, b: set) -> float:
    return round(len(a & b) / len(a | b), 4) if a | b else 1.0


def option_name(codec: str, quality: int) -> str:
    return codec if codec == "zstd" else f"{codec}_q{quality}"


def precision_name(precision: float | None) -> str:
    return "float16" if precision is None else f"fixed_1/{round(1 / precision)}"


def write_jpeg420(path: Path, video_id: str, frames: np.ndarray) -> None:
    """The reference row: libjpeg's default 4:2:0, so one frame per chunk (its chroma filters reach across rows)."""
    array = zarr.create_array(store=str(path / layout.FRAMES_GROUP / video_id), shape=frames.shape, dtype="uint8",
                              chunks=(1, *frames.shape[1:]), shards=(256, *frames.shape[1:]), zarr_format=3,
                              serializer=codecs.ImageCodec(format="jpeg", level=JPEG420[1]), compressors=[Crc32cCodec()])  # fmt: skip
    array[:] = frames


def frames_options(work: Path, rows: list[dict], reference: dict[str, np.ndarray], count: int) -> dict[str, dict]:
    out = {}
    for codec, quality in [*FRAME_OPTIONS, JPEG420]:
        path = work / "frames" / f"{option_name(codec, quality)}.zarr"
        start = time.perf_counter()
        for row in rows:
            if codec == JPEG420[0]:
                write_jpeg420(path, row["video_id"], reference[row["video_id"]])
                continue
            attrs = store.array_attrs(work / "store.zarr", layout.FRAMES_GROUP, row["video_id"])
            attrs = {**attrs, "fingerprint": f"{attrs['fingerprint']}-{option_name(codec, quality)}"}
            attrs.pop("num_frames")
            store.write_frames(path, row["video_id"], [reference[row["video_id"]]], height=row["height"], width=row["width"],
                               chunk_frames=8, shard_frames=256, attrs=attrs, codec=codec, quality=quality)  # fmt: skip
        encode = time.perf_counter() - start
        start = time.perf_counter()
        decoded = {row["video_id"]: zarr.open_array(str(path / layout.FRAMES_GROUP / row["video_id"]), mode="r")[:] for row in rows}
        decode = time.perf_counter() - start
        start = time.perf_counter()  # the pipeline's own reader (StoredArray: ChunkReader where it can)
        for row in rows:
            store.open_frames(path, row["video_id"])[:]
        pipeline_decode = time.perf_counter() - start
        both = [(decoded[v], reference[v]) for v in reference]
        out[option_name(codec, quality)] = {
            "bytes_per_frame": round(folder_bytes(path / layout.FRAMES_GROUP) / count),
            "encode_frames_per_s": round(count / encode), "decode_frames_per_s": round(count / decode),
            "pipeline_decode_frames_per_s": round(count / pipeline_decode),
            "psnr_db": psnr(np.concatenate([a for a, _ in both]), np.concatenate([b for _, b in both])),
        }  # fmt: skip
    # The baseline: JPEG rawframes, one file per frame, as mmaction2's and denseflow's tools write them.
    folder = work / "rawframes"
    start = time.perf_counter()
    for video_id, frames in reference.items():
        (folder / video_id).mkdir(parents=True)
        for i, frame in enumerate(frames):
            cv2.imwrite(str(folder / video_id / f"img_{i + 1:05d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    encode = time.perf_counter() - start
    start = time.perf_counter()
    decoded = {v: np.stack([cv2.cvtColor(cv2.imread(str(folder / v / f"img_{i + 1:05d}.jpg")), cv2.COLOR_BGR2RGB)
                            for i in range(len(f))]) for v, f in reference.items()}  # fmt: skip
    decode = time.perf_counter() - start
    out["rawframes_jpeg_q95_files"] = {
        "bytes_per_frame": round(folder_bytes(folder) / count), "files": count,
        "encode_frames_per_s": round(count / encode), "decode_frames_per_s": round(count / decode),
        "psnr_db": psnr(np.concatenate(list(decoded.values())), np.concatenate(list(reference.values()))),
    }  # fmt: skip
    return out


def flow_from_frames(work: Path, name: str, frames_store: Path, workers: int) -> Path:
    """TV-L1 flow of the frames in `frames_store`, into a store of its own; returns that store."""
    path = work / "flow_from" / f"{name}.zarr"
    shutil.copytree(frames_store / layout.FRAMES_GROUP, path / layout.FRAMES_GROUP)
    shutil.copy(frames_store / "zarr.json", path / "zarr.json")
    summary = flow_stage.run(FlowParams(method="tvl1"), work / "decode", path, work / "flow_from" / f"{name}_flow", workers=workers)
    assert "failed" not in summary.counts, summary.text()
    return path


def mds(work: Path, flow_table: Path, path: Path, name: str, grid: float | None = GRID) -> set[tuple[str, int]]:
    """Clips MDS selects from the flow in `path`, scored as the DAG does (on the 1/32 px grid) or as stored."""
    sample_stage.run(SampleParams(flow_grid=grid), flow_table, path, work / "sample" / name, scheduler="sync")
    return selected(work / "sample" / name)


def flow_options(work: Path, rows: list[dict], truths: dict, reference: Path, pairs: int) -> dict[str, dict]:
    ref_flow = {row["video_id"]: store.open_flow(reference, "tvl1", row["video_id"])[:] for row in rows}
    ref_epe = epe(reference, "tvl1", rows, truths)
    ref_selection = mds(work, work / "flow", reference, "flow_float16")
    ref_raw = mds(work, work / "flow", reference, "flow_float16_raw", None)
    group = layout.flow_group("tvl1")
    out = {}
    for precision in FLOW_OPTIONS:
        name = precision_name(precision)
        path = work / "flow" / f"{name.replace('/', '_')}.zarr"
        shutil.copytree(reference / group, path / group)
        start = time.perf_counter()
        if precision is not None:
            for row in rows:
                attrs = store.array_attrs(path, group, row["video_id"])
                arrays.recode_flow(path, "tvl1", row["video_id"], precision, attrs)
        encode = time.perf_counter() - start
        start = time.perf_counter()
        back = {row["video_id"]: store.open_flow(path, "tvl1", row["video_id"])[:] for row in rows}
        decode = time.perf_counter() - start
        added = max(float(np.abs(back[v].astype(np.float32) - ref_flow[v].astype(np.float32)).max()) for v in back)
        out[name] = {
            "bytes_per_pair": round(folder_bytes(path / group) / pairs),
            # Float16 is what the flow stage writes: re-encoding it is this option's whole encode cost.
            "encode_pairs_per_s": None if precision is None else round(pairs / encode),
            "decode_pairs_per_s": round(pairs / decode),
            "max_added_error_px": round(added, 5),
            "epe_px": epe(path, "tvl1", rows, truths),
            "mds_jaccard_vs_float16": jaccard(mds(work, work / "flow", path, name.replace("/", "_")), ref_selection),
            "mds_jaccard_vs_float16_scored_as_stored": jaccard(mds(work, work / "flow", path, name.replace("/", "_") + "_raw", None), ref_raw),
        }
        out[name]["added_epe_px"] = round(out[name]["epe_px"] - ref_epe, 5)
    out["mmaction2_jpeg_pm20"] = mmaction2_flow(work, rows, truths, ref_flow, (ref_selection, ref_raw), ref_epe, pairs)
    return out


def mmaction2_flow(work, rows, truths, ref_flow, ref_selections, ref_epe, pairs) -> dict:
    """Flow as mmaction2's tools store it: clipped to +-20 px, 8 bits, x and y grey JPEGs (q95)."""
    ref_selection, ref_raw = ref_selections
    folder = work / "flow_jpeg"
    start = time.perf_counter()
    for video_id, flow in ref_flow.items():
        (folder / video_id).mkdir(parents=True)
        scaled = np.round((np.clip(flow.astype(np.float32), -MMACTION_BOUND, MMACTION_BOUND) + MMACTION_BOUND) * (255 / (2 * MMACTION_BOUND)))
        for i, pair in enumerate(scaled.astype(np.uint8)):
            for axis, letter in enumerate("xy"):
                cv2.imwrite(str(folder / video_id / f"flow_{letter}_{i + 1:05d}.jpg"), pair[..., axis], [cv2.IMWRITE_JPEG_QUALITY, 95])
    encode = time.perf_counter() - start
    start = time.perf_counter()
    back = {}
    for video_id, flow in ref_flow.items():
        planes = [[cv2.imread(str(folder / video_id / f"flow_{letter}_{i + 1:05d}.jpg"), cv2.IMREAD_GRAYSCALE) for letter in "xy"]
                  for i in range(len(flow))]  # fmt: skip
        back[video_id] = (np.stack([np.stack(p, -1) for p in planes]).astype(np.float32) * (2 * MMACTION_BOUND / 255) - MMACTION_BOUND)
    decode = time.perf_counter() - start
    # The same flow as float16 in a store of its own, for the error against the ground truth and MDS.
    path = work / "flow" / "mmaction2.zarr"
    group = layout.flow_group("tvl1")
    for row in rows:
        tmp = store.create_partial(path, group, row["video_id"], shape=back[row["video_id"]].shape, dtype=layout.FLOW_DTYPE,
                                   chunks=(8, *back[row["video_id"]].shape[1:]), shards=(256, *back[row["video_id"]].shape[1:]),
                                   axes=layout.FLOW_AXES)  # fmt: skip
        store.open_partial(tmp)[:] = back[row["video_id"]].astype(np.float16)
        store.publish(path, group, row["video_id"], tmp, {})
    result = {
        "bytes_per_pair": round(folder_bytes(folder) / pairs), "files": 2 * pairs,
        "encode_pairs_per_s": round(pairs / encode), "decode_pairs_per_s": round(pairs / decode),
        "max_added_error_px": round(max(float(np.abs(back[v] - ref_flow[v].astype(np.float32)).max()) for v in back), 5),
        "epe_px": epe(path, "tvl1", rows, truths),
        "mds_jaccard_vs_float16": jaccard(mds(work, work / "flow", path, "mmaction2"), ref_selection),
        "mds_jaccard_vs_float16_scored_as_stored": jaccard(mds(work, work / "flow", path, "mmaction2_raw", None), ref_raw),
    }  # fmt: skip
    result["added_epe_px"] = round(result["epe_px"] - ref_epe, 5)
    return result


def loader_clips_per_s(sample_dir: Path, path: Path, cache_mb: int, reads_only: bool = False, before: bool = False) -> float:
    """One epoch of every selected clip (two views of RGB and flow each), in process, with a fresh
    dataset (a cold cache): through ClipLoader with the default augmentations, or (`reads_only`)
    only the store reads of each clip's frames and flow. `before`: the loader as it was before this
    benchmark found its costs (the same samples): each view seeded with torch.manual_seed, and
    read from the store on its own even where the two views share chunks."""
    dataset = MSCLClips(sample_dir / "clips.parquet", path, "tvl1", DatasetParams(epoch="per_clip", cache_mb=cache_mb))
    seed_cpu = augment.seed_cpu
    augment.seed_cpu = torch.manual_seed if before else seed_cpu
    if before:
        dataset._read_stored = lambda video, starts: [MSCLClips._read_stored(dataset, video, [s])[0] for s in starts]
    try:
        clips, start = 0, time.perf_counter()
        if reads_only:
            for video_id, start_frame in zip(dataset.index.video_ids, dataset.index.starts, strict=True):
                dataset.read(str(video_id), int(start_frame))  # one view's frames and flow
                clips += 1
        else:
            for batch in DeviceFeed(ClipLoader(dataset, 8, num_workers=0), "cpu"):  # read, then augmented
                clips += len(batch["rgb"])
        return clips / (time.perf_counter() - start)
    finally:
        augment.seed_cpu = seed_cpu


def loader_ab(sample_dir: Path, lossless: Path, default: Path, repeats: int = 3) -> dict[str, dict]:
    """clips/s of the lossless store and of the DAG's, and of the lossless store read as the loader
    did before (`before`: its seeding and its reads), the runs alternating so that drift in the machine's speed
    falls on all alike. Ratios: medians over repeats of the DAG's rate over each other's."""
    out = {}
    arms = {"before: zstd+float16": (lossless, True), "zstd+float16": (lossless, False), DEFAULT: (default, False)}
    for label, cache_mb, reads_only in (("from_store", 0, False), ("cached", 512, False), ("reads_only", 0, True)):
        rates: dict[str, list[float]] = {name: [] for name in arms}
        for _ in range(repeats):
            for name, (path, before) in arms.items():
                if reads_only and before:
                    continue  # the reads do not seed anything
                rates[name].append(loader_clips_per_s(sample_dir, path, cache_mb, reads_only, before))
        entry: dict[str, object] = {name: round(statistics.median(r), 1) for name, r in rates.items() if r}
        for name in ("zstd+float16", "before: zstd+float16"):
            if rates[name]:
                ratios = [b / a for a, b in zip(rates[name], rates[DEFAULT], strict=True)]
                entry[f"ratio_vs_{name.replace(': ', '_').replace('+', '_')}"] = round(statistics.median(ratios), 3)
        out[label] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--workers", type=int, default=default_workers())
    args = parser.parse_args()
    cv2.setNumThreads(1)
    videos, truths = make_inputs(args.videos, args.frames)
    work = ROOT / "work"
    shutil.rmtree(work, ignore_errors=True)
    probe_stage.run(ProbeParams(), videos, work / "manifest", scheduler="sync")
    reference = work / "store.zarr"
    decode_stage.run(DecodeParams(), work / "manifest", videos, reference, work / "decode", scheduler="sync")
    rows = read_table(work / "decode" / "decoded.parquet").to_pylist()
    frames = {row["video_id"]: store.open_frames(reference, row["video_id"])[:] for row in rows}
    count = sum(len(f) for f in frames.values())
    pairs = count - len(rows)
    results: dict[str, object] = {"videos": args.videos, "frames": count, "pairs": pairs, "size": "170x128"}

    results["frames"] = frames_options(work, rows, frames, count)
    summary = flow_stage.run(FlowParams(method="tvl1"), work / "decode", reference, work / "flow", workers=args.workers)
    assert summary.counts.get("computed") == len(rows), summary.text()
    results["flow"] = flow_options(work, rows, truths, reference, pairs)

    # The flow stage decodes lossy-stored videos again from the source, so its flow and MDS selection
    # do not depend on the frame codec (tests/test_codecs.py: the same bytes). Were the flow computed
    # from the stored frames instead (its fallback without the videos root), this is what it would cost.
    lossless_epe, lossless_selection = results["flow"]["float16"]["epe_px"], selected(work / "sample" / "flow_float16")
    for codec, quality in FLOW_FROM_FRAMES:
        name = option_name(codec, quality)
        path = flow_from_frames(work, name, work / "frames" / f"{name}.zarr", args.workers)
        entry = results["frames"][name]
        entry["flow_from_these_frames_epe_px"] = epe(path, "tvl1", rows, truths)
        entry["flow_from_these_frames_added_epe_px"] = round(entry["flow_from_these_frames_epe_px"] - lossless_epe, 5)
        entry["flow_from_these_frames_mds_jaccard"] = jaccard(
            mds(work, work / "flow_from" / f"{name}_flow", path, f"frames_{name}"), lossless_selection
        )

    # Totals per frame (frames + one flow pair), and the loader on the lossless store and on the
    # smallest combination that meets the targets.
    combos = {}
    for frame_name, frame in results["frames"].items():
        if frame_name.startswith("rawframes"):
            continue
        for flow_name, flow in results["flow"].items():
            if flow_name.startswith("mmaction2"):
                continue
            kb = (frame["bytes_per_frame"] + flow["bytes_per_pair"] * pairs / count) / 1000
            meets = (kb <= TARGET_KB_PER_FRAME and flow["max_added_error_px"] <= TARGET_ADDED_FLOW_ERROR
                     and flow["mds_jaccard_vs_float16"] >= TARGET_JACCARD)  # fmt: skip
            combos[f"{frame_name}+{flow_name}"] = {"kb_per_frame": round(kb, 2), "meets_flow_and_size_targets": meets}
    baseline = results["frames"]["rawframes_jpeg_q95_files"]["bytes_per_frame"] + results["flow"]["mmaction2_jpeg_pm20"]["bytes_per_pair"] * pairs / count
    combos["mmaction2_rawframes+flow_jpegs"] = {"kb_per_frame": round(baseline / 1000, 2)}
    results["per_frame_totals"] = combos
    lossless_kb = combos["zstd+float16"]["kb_per_frame"]
    meeting = sorted((c["kb_per_frame"], name) for name, c in combos.items() if c.get("meets_flow_and_size_targets"))
    if meeting:
        results["smallest_meeting_targets"] = {"option": meeting[0][1], "kb_per_frame": meeting[0][0]}
    results["default"] = {"option": DEFAULT, **combos[DEFAULT], "smaller_than_lossless": round(lossless_kb / combos[DEFAULT]["kb_per_frame"], 2)}
    frame_name, flow_name = DEFAULT.split("+")
    small = work / "loader.zarr"
    shutil.copytree(work / "frames" / f"{frame_name}.zarr" / layout.FRAMES_GROUP, small / layout.FRAMES_GROUP)
    shutil.copytree(work / "flow" / f"{flow_name.replace('/', '_')}.zarr" / layout.flow_group("tvl1"), small / layout.flow_group("tvl1"))
    results["loader_clips_per_s"] = loader_ab(work / "sample" / "flow_float16", reference, small)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
