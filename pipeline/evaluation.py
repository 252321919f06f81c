"""Evaluating an RGB encoder without labels in training: video retrieval as the MSCL paper reports
it, clip retrieval beside it, and a kNN probe, on a split of labelled videos.

Retrieval (../shared/MSCL.md, section 5): one feature per video, the mean of its clips' features;
the query split's videos against the gallery split's; each set mean-centred on its own, then
L2-normalised; cosine similarity; R@k is the share of queries with a video of their class among
their k nearest gallery videos. Clip retrieval does the same with every clip as an item, so a
query's top k may be filled by clips of one gallery video. The kNN probe classifies each query
video by a majority of its k nearest gallery videos.

The split keeps each group of videos on one side: UCF101 cuts several clips (v_<Action>_gXX_cYY)
out of one long video, and a group on both sides would let a query find its own source.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from pipeline.data.augment import view_flow
from pipeline.data.dataset import normalise_rgb
from pipeline.models.encoders import pooled

UCF101_CLIP = re.compile(r"^v_(?P<action>[A-Za-z0-9]+)_g(?P<group>\d+)_c\d+$", re.IGNORECASE)


def default_group(relpath: str) -> str:
    """The group a video belongs to when the labels table gives none: for UCF101's names
    (v_<Action>_g<group>_c<clip>) the action and group, shared by the clips cut from one long video;
    any other video is a group of its own."""
    match = UCF101_CLIP.match(PurePosixPath(relpath).stem)
    return f"{match['action']}_g{match['group']}".lower() if match else relpath


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def split_videos(relpaths: list[str], labels: list[str], gallery_share: float, groups: list[str] | None = None) -> np.ndarray:
    """True where a video goes to the gallery (train) split. Within each class, whole groups
    (`groups`, or `default_group` of each path) are taken in the order of a hash of their name
    (stable, unrelated to names or order on disk) until the gallery holds its share of the class's
    videos; at least one group stays on each side where the class has two. A group is never split."""
    groups = [default_group(path) for path in relpaths] if groups is None else list(groups)
    side: dict[str, bool] = {}  # group -> in the gallery
    for label in sorted(set(labels)):
        members = [i for i, value in enumerate(labels) if value == label]
        sizes = Counter(groups[i] for i in members if groups[i] not in side)
        if not sizes:
            continue
        order = sorted(sizes, key=_hash)
        target = max(1, round(gallery_share * len(members)))
        taken = sum(1 for i in members if side.get(groups[i]))
        for position, group in enumerate(order):
            last_for_query = position == len(order) - 1 and len(order) > 1
            side[group] = taken < target and not last_for_query
            taken += sizes[group] * side[group]
    return np.array([side[group] for group in groups], bool)


def clip_starts(num_frames: int, clip_len: int, stride: int, count: int) -> list[int]:
    """`count` evenly spaced starts of whole clips (fewer if the video has fewer)."""
    last = num_frames - 1 - (clip_len - 1) * stride
    if last < 0:
        return []
    return sorted({round(x) for x in np.linspace(0, last, count)})


def centre_clip(frames: np.ndarray, size: int) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, size, size) float, normalised: short side resized to `size`, centre crop."""
    clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    clip = TF.center_crop(TF.resize(clip, [size], antialias=True), [size, size])
    return normalise_rgb(clip.permute(1, 0, 2, 3))


def centre_box(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, side, side): the largest centred square of a frame."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def centre_flow_clip(flow: np.ndarray, size: int, norm: str, bound: float = 20.0, camera: str = "none") -> torch.Tensor:
    """(T, H, W, 2) stored flow -> (2, T, size, size) float: the centred square resized to `size`,
    vectors scaled with it, as a training view's flow (`dataset.flow_camera`, `flow_norm`)."""
    clip = torch.from_numpy(np.ascontiguousarray(flow)).permute(0, 3, 1, 2)
    return view_flow(clip, centre_box(*clip.shape[-2:]), size, norm, bound, camera).permute(1, 0, 2, 3)


def motion_histogram(flow: np.ndarray, grid: int = 4, bins: int = 8) -> np.ndarray:
    """A non-learned motion descriptor of a video, to show how much motion its flow holds.

    Flow (N, H, W, 2) in pixels -> (grid * grid * bins,): each frame's median vector (the camera's
    motion, where the background dominates) is removed; in each cell of a grid x grid partition of
    the frame, the remaining vectors' directions in `bins` sectors, weighted by their length and
    summed over frames; each cell's histogram divided by the video's total and square-rooted
    (Hellinger), so cosine similarity compares distributions of motion."""
    flow = torch.from_numpy(np.asarray(flow, np.float32))
    n, height, width, _ = flow.shape
    flow = flow - flow.flatten(1, 2).median(dim=1).values[:, None, None, :]
    length = flow.norm(dim=-1)
    sector = ((torch.atan2(flow[..., 1], flow[..., 0]) / (2 * torch.pi) + 0.5) * bins).long().clamp_(0, bins - 1)
    rows = torch.arange(height) * grid // height
    cols = torch.arange(width) * grid // width
    cell = (rows[:, None] * grid + cols[None, :]).expand(n, height, width)
    histogram = torch.zeros(grid * grid * bins, dtype=torch.float64)
    histogram.index_add_(0, (cell * bins + sector).flatten(), length.flatten().double())
    return (histogram / histogram.sum().clamp_min(1e-12)).sqrt().numpy()


def retrieval_recall(query: torch.Tensor, query_labels: np.ndarray, gallery: torch.Tensor, gallery_labels: np.ndarray,
                     ks: list[int]) -> dict[str, float]:  # fmt: skip
    """R@k in percent for each k (k above the gallery size counts the whole gallery)."""
    query = F.normalize(query - query.mean(0, keepdim=True), dim=1)
    gallery = F.normalize(gallery - gallery.mean(0, keepdim=True), dim=1)
    order = torch.argsort(query @ gallery.t(), dim=1, descending=True).numpy()
    hits = gallery_labels[order] == query_labels[:, None]  # (Q, G): class match at each rank
    first = np.where(hits.any(1), hits.argmax(1), len(gallery_labels))
    return {f"R@{k}": round(100.0 * float((first < k).mean()), 2) for k in ks}


def knn_accuracy(query: torch.Tensor, query_labels: np.ndarray, gallery: torch.Tensor, gallery_labels: np.ndarray, k: int) -> float:
    """Top-1 accuracy in percent of a k-nearest-neighbour vote (cosine, after mean-centring with the
    gallery's mean); ties go to the class of the nearer neighbours."""
    centre = gallery.mean(0, keepdim=True)
    sims = F.normalize(query - centre, dim=1) @ F.normalize(gallery - centre, dim=1).t()
    k = min(k, len(gallery_labels))
    top = torch.topk(sims, k, dim=1)
    correct = 0
    for row, (indices, values) in enumerate(zip(top.indices.numpy(), top.values.numpy(), strict=True)):
        votes: Counter = Counter()
        for index, value in zip(indices, values, strict=True):
            votes[gallery_labels[index]] += 1 + 1e-6 * float(value)  # count first, similarity breaks ties
        correct += votes.most_common(1)[0][0] == query_labels[row]
    return round(100.0 * correct / len(query_labels), 2)


def video_topk(clip_scores: torch.Tensor, clip_video: np.ndarray, video_labels: np.ndarray, classes: list[str],
               ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:  # fmt: skip
    """Top-k accuracy in percent of videos whose clip scores (softmax) are averaged: the paper's
    action-recognition protocol. A video of a class the classifier never saw counts as wrong."""
    probs = torch.softmax(clip_scores.double(), dim=1)
    index = {name: i for i, name in enumerate(classes)}
    out = {}
    videos = sorted(set(clip_video.tolist()))
    mean = torch.stack([probs[clip_video == v].mean(0) for v in videos])
    truth = torch.tensor([index.get(video_labels[v], -1) for v in videos])
    for k in ks:
        top = torch.topk(mean, min(k, len(classes)), dim=1).indices
        out[f"top{k}"] = round(100.0 * float((top == truth[:, None]).any(1).double().mean()), 2)
    return out


def linear_probe(train: torch.Tensor, train_labels: np.ndarray, test: torch.Tensor, l2: float,
                 steps: int) -> tuple[torch.Tensor, list[str]]:  # fmt: skip
    """A linear classifier on frozen features: multinomial logistic regression on the train clips'
    features (standardised with the train clips' mean and spread), with an L2 penalty `l2` on the
    weights, fitted by full-batch L-BFGS for at most `steps` iterations (deterministic: no
    minibatches, no random init). Returns the test clips' class scores and the class names."""
    classes = sorted(set(train_labels.tolist()))
    target = torch.tensor([classes.index(label) for label in train_labels])
    mean, std = train.mean(0, keepdim=True), train.std(0, keepdim=True).clamp_min(1e-6)
    x, x_test = ((train - mean) / std).double(), ((test - mean) / std).double()
    weight = torch.zeros(x.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, target) + l2 * weight.square().sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        return (x_test @ weight + bias).float(), classes


def finetune(backbone: torch.nn.Module, clips: list[torch.Tensor], labels: np.ndarray, test: list[torch.Tensor], *, epochs: int,
             lr: float, batch_size: int, seed: int, device: str = "auto") -> tuple[torch.Tensor, list[str]]:  # fmt: skip
    """The encoder and a linear head trained end to end on the train clips (SGD with momentum,
    cosine-annealed, clips flipped at random), for users with a GPU (`device` auto takes CUDA when
    there is one). Returns the test clips' class scores and the class names. Changes `backbone`."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    classes = sorted(set(labels.tolist()))
    target = torch.tensor([classes.index(label) for label in labels])
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    width = backbone.widths[-1]
    model = torch.nn.ModuleDict({"backbone": backbone, "head": torch.nn.Linear(width, len(classes))}).to(device)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return model["head"](pooled(model["backbone"].stages(batch.to(device))))

    steps = epochs * -(-len(clips) // batch_size)
    optimiser = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(steps, 1))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(clips), generator=generator)
        for i in range(0, len(clips), batch_size):
            chosen = order[i : i + batch_size]
            batch = torch.stack([clips[j] for j in chosen.tolist()])
            flip = torch.rand(len(batch), generator=generator) < 0.5
            batch[flip] = batch[flip].flip(-1)
            loss = F.cross_entropy(forward(batch), target[chosen].to(device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        scores = [forward(torch.stack(test[i : i + batch_size])).float().cpu() for i in range(0, len(test), batch_size)]
    return torch.cat(scores), classes
