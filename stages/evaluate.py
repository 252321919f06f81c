"""Evaluate stage: the RGB encoders of MSCL, of the RGB-only baseline, and with random weights, on
the paper's two protocols over the labelled videos (../shared/MSCL.md, section 5): video retrieval
(the headline: test videos query the train videos, R@k) and action recognition by a linear probe
(a linear classifier on the frozen encoder's train-clip features; top-1/top-5 of the test videos,
clip scores averaged), with `evaluate.finetune` a full fine-tune as well (for a GPU); also clip
retrieval and a kNN probe.

Every encoder sees the same clips (evenly spaced per video, resized and centre-cropped to the
training crop size); a video's feature is the mean of its clips'. `data.labels` is a labels table or
a dataset's own split lists (pipeline/data/splits.py: UCF101, HMDB51; `evaluate.split` picks N). With
a split, its train videos are the gallery and its test videos the queries; without, videos are
split by a stable hash of their group within each class: the labels table's `group` column where
it has one, else UCF101's groups read from the names (one group per video for other names).
Listed videos that were not decoded are counted and named (the first few) in the summary. Writes
metrics.json (DVC metrics), named by model, and the margins of MSCL over each baseline.

With `evaluate.diagnostics`, two more blocks say where a weak result comes from: the retrieval of
MSCL's own flow encoder on the videos' flow (and of the same encoder with random weights): did
the flow teach anything?; and of a non-learned motion descriptor (direction histograms on a grid
after removing each frame's median motion): how much motion do the data and their flow hold?
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.data.splits import SplitError, match_videos, read_labels
from pipeline.evaluation import (
    centre_clip,
    centre_flow_clip,
    clip_starts,
    default_group,
    finetune,
    knn_accuracy,
    linear_probe,
    motion_histogram,  # fmt: skip
    retrieval_recall,
    split_videos,
    video_topk,
)
from pipeline.models.encoders import exported_module, flow_backbone, pooled, rgb_backbone
from pipeline.models.mscl import flow_encoder_input
from pipeline.storage.store import CorruptChunkError, open_flow, open_frames
from pipeline.storage.tables import FileSet, read_table, sweep, write_table
from schemas.errors import MissingInputError
from schemas.params import Params
from schemas.tables import DECODED, FAILURES
from stages.common import Summary, failure, log_failure

STAGE = "evaluate"
MODELS = ("mscl", "rgb_only", "random")


def load_encoder(params: Params, weights: Path | None) -> torch.nn.Module:
    """The RGB backbone: trained weights from a train stage's rgb_encoder.pt, or seeded random ones."""
    t = params.train
    torch.manual_seed(t.seed)
    backbone = rgb_backbone(t.encoder, t.width, tuple(t.blocks))
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        exported_module(backbone).load_state_dict(state, strict=True)
    return backbone.eval()


def load_flow_encoder(params: Params, model: Path | None) -> tuple[torch.nn.Module, str]:
    """MSCL's flow backbone from a train stage's model.pt (or seeded random weights), and the flow
    input it was trained on."""
    t = params.train
    flow_input = params.dataset.flow_input
    state = None
    if model is not None:
        saved = torch.load(model, map_location="cpu", weights_only=True)
        flow_input = saved["config"]["dataset"]["flow_input"]
        prefix = "flow.backbone."
        state = {key[len(prefix) :]: value for key, value in saved["state_dict"].items() if key.startswith(prefix)}
    torch.manual_seed(t.seed)
    widths = rgb_backbone(t.encoder, t.width, tuple(t.blocks)).widths
    backbone = flow_backbone(widths, t.flow_width_ratio, tuple(t.flow_blocks), flow_input)
    if state is not None:
        backbone.load_state_dict(state, strict=True)
    return backbone.eval(), flow_input


@torch.no_grad()
def clip_features(backbone: torch.nn.Module, clips: list[torch.Tensor], batch_size: int, prepare=None) -> torch.Tensor:
    """The pooled last stage of each clip; `prepare` maps a batch to what the backbone reads."""
    out = []
    for i in range(0, len(clips), batch_size):
        batch = torch.stack(clips[i : i + batch_size])
        out.append(pooled(backbone.stages(batch if prepare is None else prepare(batch))))
    return torch.cat(out).float()


def video_metrics(features: torch.Tensor, labels: np.ndarray, gallery: np.ndarray, ks: list[int], knn: int) -> dict[str, Any]:
    """R@k and the kNN probe of one feature per video: the query split against the gallery split."""
    result: dict[str, Any] = retrieval_recall(features[~gallery], labels[~gallery], features[gallery], labels[gallery], ks)
    result["knn_top1"] = knn_accuracy(features[~gallery], labels[~gallery], features[gallery], labels[gallery], knn)
    return result


def per_video(features: torch.Tensor, clip_video: np.ndarray, videos: int) -> torch.Tensor:
    """A video's feature: the mean of its clips'."""
    return torch.stack([features[clip_video == i].mean(0) for i in range(videos)])


def diagnostics(params: Params, videos, train_dir: Path, store: str | Path, gallery: np.ndarray,
                failures: list[dict[str, str]]) -> dict[str, Any]:  # fmt: skip
    """Flow encoder retrieval (trained and random) and the non-learned motion descriptor, on the flow.
    A video whose flow is damaged in the store goes to `failures` and is left out of these."""
    e, d, clip_len, stride = params.evaluate, params.dataset, params.sample.clip_len, params.sample.stride
    clips, clip_video, histograms, bad = [], [], [], set()
    for i, row in tqdm(list(videos.iterrows()), desc="evaluate: flow", unit="video"):
        try:
            flow = open_flow(store, params.flow.method, row.video_id)[:]
        except CorruptChunkError as exc:
            failures.append(failure(STAGE, row.video_id, row.relpath, "bad_flow", str(exc)))
            log_failure(failures[-1])
            bad.add(row.video_id)
            continue
        histograms.append(motion_histogram(flow))
        for start in clip_starts(len(flow), clip_len, stride, e.clips_per_video):
            clips.append(centre_flow_clip(flow[start : start + (clip_len - 1) * stride + 1 : stride], d.crop_size, d.flow_norm, d.flow_bound,
                                          d.flow_camera))  # fmt: skip
            clip_video.append(i)
    if bad:
        videos, gallery, clip_video = _without(videos, gallery, clip_video, bad)
    labels = videos.label.to_numpy()
    clip_video = np.array(clip_video)
    out: dict[str, Any] = {"motion_histogram": video_metrics(torch.tensor(np.stack(histograms)), labels, gallery, e.ks, e.knn)}
    model = train_dir / "mscl" / "model.pt"
    for name, weights in (("flow_encoder", model), ("flow_encoder_random", None)):
        if weights is not None and not weights.is_file():
            continue
        backbone, flow_input = load_flow_encoder(params, weights)
        features = clip_features(backbone, clips, e.batch_size, lambda batch: flow_encoder_input(batch, flow_input))
        out[name] = video_metrics(per_video(features, clip_video, len(videos)), labels, gallery, e.ks, e.knn)
    return out


def _without(videos, gallery_video: np.ndarray, clip_video: list[int], bad: set[str]):
    """The videos, gallery mask and clips' video indices with the `bad` videos left out."""
    keep = ~videos.video_id.isin(bad).to_numpy()
    new_index = np.cumsum(keep) - 1  # old row -> new row, for the rows kept
    return videos[keep].reset_index(drop=True), gallery_video[keep], [int(new_index[i]) for i in clip_video]


def run(params: Params, train_dir: str | Path, labels_path: str | Path, decode_dir: str | Path, store: str | Path,
        out: str | Path) -> Summary:  # fmt: skip
    summary = Summary("evaluate")
    sweep(out)  # what a killed run left: its outputs' temporary files, a committed set to finish
    videos, gallery_video = _labelled_videos(params, labels_path, decode_dir, summary)
    clips, clip_video, failures = _read_clips(params, videos, store)
    if failures:
        videos, gallery_video, clip_video = _without(videos, gallery_video, clip_video, {f["video_id"] for f in failures})
        summary.add("videos left out (damaged in the store)", len(failures))
    clip_video = np.array(clip_video)
    in_gallery = gallery_video[clip_video]
    summary.add("gallery clips", int(in_gallery.sum()))
    summary.add("query clips", int((~in_gallery).sum()))
    metrics = _score_models(params, Path(train_dir), videos, gallery_video, clips, clip_video, summary)
    if params.evaluate.diagnostics:
        metrics["diagnostics"] = diagnostics(params, videos, Path(train_dir), store, gallery_video, failures)
        for name, result in metrics["diagnostics"].items():
            summary.notes.append(f"{name:>19}: videos R@1 {result['R@1']:5.1f}  knn_top1 {result['knn_top1']:5.1f}")
    out = Path(out)
    failures.sort(key=lambda row: (row["video_id"], row["detail"]))
    with FileSet(out) as files:  # metrics and failures replaced together, or neither
        write_table(out / "failures.parquet", failures, FAILURES, files=files)
        files.stage("metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=2) + "\n"))
    summary.notes.append(f"MSCL R@1 over RGB-only {metrics['margin']['mscl_vs_rgb_only_R@1']:+.1f}, "
                         f"over random weights {metrics['margin']['mscl_vs_random_R@1']:+.1f} points")  # fmt: skip
    return summary


def _labelled_videos(params: Params, labels_path: str | Path, decode_dir: str | Path, summary: Summary) -> tuple[Any, np.ndarray]:
    """The decoded videos with a label, and which are in the gallery: the dataset's own split (train
    is the gallery, test the queries), or a stable split by group within each class."""
    e = params.evaluate
    decoded = read_table(Path(decode_dir) / "decoded.parquet", DECODED).to_pandas()
    matched = match_videos(read_labels(labels_path, e.split), list(decoded.relpath))
    if matched.report():
        summary.notes.append(f"{labels_path}: {matched.report()}")
        summary.add("listed videos not found", len(matched.missing))
    videos = decoded.merge(matched.table, on="relpath").sort_values("relpath").reset_index(drop=True)
    official = videos.split.notna()
    if official.any():  # the dataset's own split: train is the gallery, test the queries
        if not official.all():
            summary.notes.append(f"{labels_path}: {int((~official).sum())} labelled videos in neither split, left out")
        videos = videos[official].reset_index(drop=True)
    summary.add("labelled videos", len(videos))
    if len(videos) < 2 or videos.label.nunique() < 2:
        raise SplitError(f"{labels_path}: evaluation needs at least two labelled, decoded videos of two classes")
    if official.any():
        gallery_video = np.array(videos.split == "train", dtype=bool)  # a writable copy: torch indexes with it
        if gallery_video.all() or not gallery_video.any():
            raise SplitError(f"{labels_path}: split {e.split} puts every matched video on one side; evaluation needs both")
    else:
        groups = [str(g) if isinstance(g, str) and g else default_group(path) for g, path in zip(videos.group, videos.relpath, strict=True)]
        gallery_video = split_videos(list(videos.relpath), list(videos.label), e.gallery_share, groups)
        summary.add("groups", len(set(groups)))
    summary.add("gallery videos", int(gallery_video.sum()))
    summary.add("query videos", int((~gallery_video).sum()))
    return videos, gallery_video


def _read_clips(params: Params, videos: Any, store: str | Path) -> tuple[list, list[int], list[dict[str, str]]]:
    """Every video's evenly spaced clips, centre-cropped: (clips, each one's video, failures); a
    video whose frames are damaged is left out, the rest read."""
    e, clip_len, stride = params.evaluate, params.sample.clip_len, params.sample.stride
    clips, clip_video, failures = [], [], []
    for i, row in tqdm(list(videos.iterrows()), desc="evaluate: clips", unit="video"):
        try:
            frames = open_frames(store, row.video_id)
            starts = clip_starts(row.num_frames, clip_len, stride, e.clips_per_video)
            read = [centre_clip(frames[s : s + (clip_len - 1) * stride + 1 : stride], params.dataset.crop_size) for s in starts]
        except CorruptChunkError as exc:  # that video is left out, the rest evaluated
            failures.append(failure(STAGE, row.video_id, row.relpath, "bad_frames", str(exc)))
            log_failure(failures[-1])
            continue
        clips += read
        clip_video += [i] * len(read)
    return clips, clip_video, failures


def _score_models(params: Params, train_dir: Path, videos: Any, gallery_video: np.ndarray, clips: list, clip_video: np.ndarray,
                  summary: Summary) -> dict[str, Any]:  # fmt: skip
    """Every model's video and clip retrieval, kNN, and (as set) linear probe and fine-tuning, with
    MSCL's margins over the baselines."""
    e = params.evaluate
    clip_labels, in_gallery = videos.label.to_numpy()[clip_video], gallery_video[clip_video]
    metrics: dict[str, Any] = {}
    video_labels = videos.label.to_numpy()
    for name in MODELS:
        weights = None if name == "random" else train_dir / name / "rgb_encoder.pt"
        if weights is not None and not weights.is_file():
            raise MissingInputError(f"{weights}: no trained encoder; run the train stage (python cli.py train --method {name})")
        features = clip_features(load_encoder(params, weights), clips, e.batch_size)
        result = video_metrics(per_video(features, clip_video, len(videos)), video_labels, gallery_video, e.ks, e.knn)
        query, gallery = features[~in_gallery], features[in_gallery]
        result["clip"] = retrieval_recall(query, clip_labels[~in_gallery], gallery, clip_labels[in_gallery], e.ks)
        line = "  ".join(f"{key} {value:5.1f}" for key, value in result.items() if key != "clip")
        line += f"  |  clips R@1 {result['clip']['R@1']:5.1f}"
        if e.linear_probe:
            scores, classes = linear_probe(gallery, clip_labels[in_gallery], query, e.probe_l2, e.probe_steps)
            result["linear_probe"] = video_topk(scores, clip_video[~in_gallery], video_labels, classes)
            line += f"  |  linear probe top-1 {result['linear_probe']['top1']:5.1f}"
        if e.finetune:
            train_clips = [clip for clip, inside in zip(clips, in_gallery, strict=True) if inside]
            test_clips = [clip for clip, inside in zip(clips, in_gallery, strict=True) if not inside]
            scores, classes = finetune(load_encoder(params, weights), train_clips, clip_labels[in_gallery], test_clips,
                                       epochs=e.finetune_epochs, lr=e.finetune_lr, batch_size=e.batch_size, seed=params.train.seed)  # fmt: skip
            result["finetune"] = video_topk(scores, clip_video[~in_gallery], video_labels, classes)
            line += f"  |  fine-tuned top-1 {result['finetune']['top1']:5.1f}"
        metrics[name] = result
        summary.notes.append(f"{name:>8}: videos {line}")
    metrics["margin"] = {
        "mscl_vs_rgb_only_R@1": round(metrics["mscl"]["R@1"] - metrics["rgb_only"]["R@1"], 2),
        "mscl_vs_random_R@1": round(metrics["mscl"]["R@1"] - metrics["random"]["R@1"], 2),
    }
    for protocol in ("linear_probe", "finetune"):
        if protocol in metrics["mscl"]:
            for other in ("rgb_only", "random"):
                margin = metrics["mscl"][protocol]["top1"] - metrics[other][protocol]["top1"]
                metrics["margin"][f"mscl_vs_{other}_{protocol}_top1"] = round(margin, 2)
    return metrics
