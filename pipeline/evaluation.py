"""Evaluating an RGB encoder without labels in training: clip retrieval as the MSCL authors measure
it, and a kNN probe, on a split of labelled videos.

Retrieval (../shared/MSCL.md, section 5): features of the query split's clips against the gallery
split's; each set mean-centred on its own, then L2-normalised; cosine similarity; R@k is the share
of queries with a clip of their class among their k nearest gallery clips. The kNN probe classifies
each query video (its clips' mean feature) by a majority of its k nearest gallery videos.
"""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from pipeline.dataset import normalise_rgb


def split_videos(relpaths: list[str], labels: list[str], gallery_share: float) -> np.ndarray:
    """True where a video goes to the gallery (train) split: within each class, videos ordered by a
    hash of their path (stable, unrelated to names or order on disk), the first share of them."""
    gallery = np.zeros(len(relpaths), bool)
    for label in sorted(set(labels)):
        members = [i for i, value in enumerate(labels) if value == label]
        members.sort(key=lambda i: hashlib.sha256(relpaths[i].encode()).hexdigest())
        take = min(len(members) - 1, max(1, round(gallery_share * len(members)))) if len(members) > 1 else 1
        gallery[members[:take]] = True
    return gallery


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
