"""Retrieval and kNN maths on hand-made features, the deterministic split, and the evaluate stage
end to end on the small demo."""

import json

import numpy as np
import pytest
import torch

from pipeline.evaluation import (
    centre_flow_clip,
    clip_starts,
    default_group,
    knn_accuracy,
    linear_probe,
    motion_histogram,
    retrieval_recall,  # fmt: skip
    split_videos,
    video_topk,
)
from pipeline.storage.tables import read_table
from pipeline.trainer import train
from schemas.params import DatasetParams, FlowParams, Params, TrainParams
from stages import evaluate as evaluate_stage


def test_recall_at_k_counts_a_hit_when_any_of_the_top_k_shares_the_class():
    # Gallery along three axes; each query is nearest to one gallery item, second nearest another.
    gallery = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [-1.0, 0, 0]])
    gallery_labels = np.array(["a", "b", "c", "d"])
    query = torch.tensor([[1.0, 0.5, 0], [0, 0.2, 1.0], [-1.0, 0, 0.3]])
    query_labels = np.array(["a", "b", "c"])
    # Mean-centring changes nothing here that the assertions depend on: check the raw ranks first.
    ranks = torch.argsort(torch.nn.functional.normalize(query - query.mean(0), dim=1)
                          @ torch.nn.functional.normalize(gallery - gallery.mean(0), dim=1).t(), dim=1, descending=True)  # fmt: skip
    first = [list(gallery_labels[r]).index(label) for r, label in zip(ranks.numpy(), query_labels, strict=True)]
    result = retrieval_recall(query, query_labels, gallery, gallery_labels, [1, 2, 3, 4, 50])
    for k in (1, 2, 3, 4):
        assert result[f"R@{k}"] == pytest.approx(100 * np.mean([f < k for f in first]), abs=0.01)
    assert result["R@50"] == 100.0  # k past the gallery: every query finds its class
    assert first[0] == 0  # query a's nearest is gallery a


def test_recall_is_perfect_for_separated_classes_and_chance_for_noise():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 32)) * 5
    labels = np.repeat(np.arange(4), 10)
    feats = torch.tensor(centres[labels] + rng.normal(size=(40, 32)) * 0.1, dtype=torch.float32)
    assert retrieval_recall(feats[::2], labels[::2], feats[1::2], labels[1::2], [1])["R@1"] == 100.0
    noise = torch.tensor(rng.normal(size=(4000, 32)), dtype=torch.float32)
    chance = retrieval_recall(noise[:2000], rng.integers(0, 4, 2000), noise[2000:], rng.integers(0, 4, 2000), [1])["R@1"]
    assert 20 < chance < 30  # one class in four


def test_knn_votes_by_majority():
    gallery = torch.tensor([[1.0, 0], [0.9, 0.1], [0.8, 0.2], [0, 1.0], [0.1, 0.9]])
    labels = np.array(["x", "x", "y", "y", "y"])
    assert knn_accuracy(torch.tensor([[1.0, 0.05]]), np.array(["x"]), gallery, labels, 3) in (0.0, 100.0)
    assert knn_accuracy(torch.tensor([[0.05, 1.0]]), np.array(["y"]), gallery, labels, 1) == 100.0


def test_split_is_per_class_stable_and_leaves_both_sides_non_empty():
    relpaths = [f"{c}/v{i}.mp4" for c in "abc" for i in range(4)]
    labels = [p[0] for p in relpaths]
    gallery = split_videos(relpaths, labels, 0.5)
    assert all(gallery[[i for i, l in enumerate(labels) if l == c]].sum() == 2 for c in "abc")
    assert (split_videos(list(reversed(relpaths)), list(reversed(labels)), 0.5) == gallery[::-1]).all()  # order-free
    assert split_videos(["a/1", "a/2"], ["a", "a"], 0.9).tolist().count(False) == 1  # a query is always left


def test_a_group_never_straddles_the_split():
    """UCF101 cuts several clips out of one long video (v_<Action>_gXX_cYY): a group on both sides
    would let a query find its own source video in the gallery."""
    relpaths = [f"{a}/v_{a}_g{g:02d}_c{c:02d}.avi" for a in ("ApplyEyeMakeup", "Basketball") for g in range(1, 8) for c in range(1, 2 + g % 4)]
    labels = [p.split("/")[0] for p in relpaths]
    groups = [default_group(p) for p in relpaths]
    assert groups[0] == "applyeyemakeup_g01" and len(set(groups)) == 14
    gallery = split_videos(relpaths, labels, 0.5)
    for group in set(groups):
        sides = {bool(gallery[i]) for i, g in enumerate(groups) if g == group}
        assert len(sides) == 1, group  # all its clips on one side
    for label in set(labels):
        members = [i for i, value in enumerate(labels) if value == label]
        assert 0.3 < gallery[members].mean() < 0.7  # about the share, in whole groups
    plain = split_videos(relpaths, labels, 0.5, groups=relpaths)  # one group per video: the groups straddle
    assert any(len({bool(plain[i]) for i, g in enumerate(groups) if g == group}) == 2 for group in set(groups))
    given = split_videos(["a/1", "a/2", "a/3", "a/4"], ["a"] * 4, 0.5, groups=["x", "x", "x", "y"])  # a labels table's groups
    assert given.tolist() in ([True, True, True, False], [False, False, False, True])
    assert default_group("Other/clip_01.mp4") == "Other/clip_01.mp4"


def test_linear_probe_separates_separable_classes_and_not_noise():
    rng = np.random.default_rng(0)
    centres = {"a": 0.0, "b": 4.0, "c": 8.0}

    def features(labels):
        return torch.tensor(np.stack([rng.normal(centres[label], 1.0, 16) for label in labels]), dtype=torch.float32)

    train_labels = np.array(["a", "b", "c"] * 20)
    video_labels = np.array(["a", "b", "c"] * 7)[:20]  # 20 test videos of 3 clips each
    clip_video = np.repeat(np.arange(20), 3)
    scores, classes = linear_probe(features(train_labels), train_labels, features(video_labels[clip_video]), l2=1e-3, steps=100)
    assert classes == ["a", "b", "c"] and scores.shape == (60, 3)
    assert video_topk(scores, clip_video, video_labels, classes) == {"top1": 100.0, "top5": 100.0}
    noise = torch.tensor(rng.normal(size=(60, 16)), dtype=torch.float32)
    scores, classes = linear_probe(noise, train_labels, torch.tensor(rng.normal(size=(60, 16)), dtype=torch.float32), l2=1e-3, steps=100)
    assert video_topk(scores, clip_video, video_labels, classes)["top1"] < 70


def test_video_topk_averages_clip_scores_and_counts_unknown_classes_wrong():
    scores = torch.tensor([[5.0, 0.0], [0.0, 1.0], [0.0, 5.0], [5.0, 0.0]])  # video 0: clips say a (strongly), b (weakly)
    top = video_topk(scores, np.array([0, 0, 1, 2]), np.array(["a", "b", "zz"]), ["a", "b"])
    assert top == {"top1": round(200 / 3, 2), "top5": round(200 / 3, 2)}  # video 2's class was never trained on


def test_clip_starts_are_evenly_spaced_whole_clips():
    assert clip_starts(48, 8, 4, 4) == [0, 6, 13, 19]  # last start 48 - 1 - 28 = 19
    assert clip_starts(29, 8, 4, 4) == [0] and clip_starts(28, 8, 4, 4) == []


def test_motion_histogram_sees_the_objects_motion_not_the_cameras():
    flow = np.zeros((3, 40, 40, 2), np.float32)
    flow[..., 0] = 1.5  # a pan to the right, everywhere
    assert not motion_histogram(flow).any()  # nothing moves but the camera
    flow[:, 0:10, 0:10] += (0.0, 2.0)  # an object in the top-left cell moving down (v > 0)
    histogram = motion_histogram(flow, grid=4, bins=8).reshape(4, 4, 8)
    assert histogram[0, 0].argmax() == 6  # atan2(2, 0) = pi/2: sector (1/4 + 1/2) * 8
    assert np.isclose((histogram**2).sum(), 1.0)  # Hellinger: square roots of a distribution
    assert histogram.sum() == histogram[0, 0, 6]  # all of it in that cell and sector


def test_centre_flow_clip_scales_vectors_with_the_resize():
    flow = np.zeros((2, 64, 96, 2), np.float16)
    flow[..., 0], flow[..., 1] = 4.0, -2.0
    clip = centre_flow_clip(flow, 32, "none")  # the centre 64 x 64 square, halved
    assert clip.shape == (2, 2, 32, 32)
    assert torch.allclose(clip[0], torch.tensor(2.0)) and torch.allclose(clip[1], torch.tensor(-1.0))
    assert torch.allclose(centre_flow_clip(flow, 32, "none", camera="median"), torch.tensor(0.0))  # a pan, removed


def test_evaluate_stage_scores_every_model_on_the_demo(demo_sampled, tmp_path):
    params = Params()
    params = params.model_copy(update={
        "flow": FlowParams(method="dis"),
        "dataset": DatasetParams(crop_size=32),
        "train": TrainParams(encoder="compact", width=8, queue_size=16, batch_size=8, epochs=1, num_workers=0, local_dim=16,
                             flow_width_ratio=0.5, flow_blocks=(1, 1, 1, 1)),
    })  # fmt: skip
    for method in ("mscl", "rgb_only"):
        train(params.train, params.dataset, method=method, index=demo_sampled / "sample" / "clips.parquet",
              store=demo_sampled / "store.zarr", flow_method="dis", out=tmp_path / "train" / method, progress=False)  # fmt: skip
    summary = evaluate_stage.run(params, tmp_path / "train", demo_sampled / "demo" / "labels.parquet", demo_sampled / "decode",
                                 demo_sampled / "store.zarr", tmp_path / "eval")  # fmt: skip
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"mscl", "rgb_only", "random", "margin", "diagnostics"}
    diagnostics = metrics["diagnostics"]
    assert set(diagnostics) == {"flow_encoder", "flow_encoder_random", "motion_histogram"}
    for block in diagnostics.values():
        assert set(block) == {"R@1", "R@5", "R@10", "R@20", "R@50", "knn_top1"} and 0 <= block["R@1"] <= block["R@5"] <= 100
    # The non-learned descriptor on the demo's exact motion classes: well above chance (1 in 6).
    assert diagnostics["motion_histogram"]["R@1"] > 50
    for name in ("mscl", "rgb_only", "random"):
        assert set(metrics[name]) == {"R@1", "R@5", "R@10", "R@20", "R@50", "knn_top1", "clip", "linear_probe"}
        probe = metrics[name]["linear_probe"]
        assert set(probe) == {"top1", "top5"} and 0 <= probe["top1"] <= probe["top5"] <= 100
        assert abs(probe["top1"] * 6 / 100 - round(probe["top1"] * 6 / 100)) < 1e-3  # of 6 test videos
        assert metrics[name]["R@1"] <= metrics[name]["R@5"] <= metrics[name]["R@50"] == 100.0
        assert set(metrics[name]["clip"]) == {"R@1", "R@5", "R@10", "R@20", "R@50"}
        # Video level: 6 query videos, so every R@k is a multiple of 1/6.
        assert all(abs(value * 6 / 100 - round(value * 6 / 100)) < 1e-3 for key, value in metrics[name].items() if key.startswith("R@"))
    assert metrics["margin"]["mscl_vs_random_R@1"] == pytest.approx(metrics["mscl"]["R@1"] - metrics["random"]["R@1"])
    top1 = {name: metrics[name]["linear_probe"]["top1"] for name in ("mscl", "rgb_only", "random")}
    assert metrics["margin"]["mscl_vs_rgb_only_linear_probe_top1"] == pytest.approx(top1["mscl"] - top1["rgb_only"])
    assert summary.counts["labelled videos"] == 12 and summary.counts["query clips"] == 6 * 8
    assert summary.counts["query videos"] == summary.counts["gallery videos"] == 6
    # The dataset's own split lists as labels: train is the gallery, test the queries, and a listed
    # video that was not decoded is named, not fatal.
    labels = read_table(demo_sampled / "demo" / "labels.parquet").to_pylist()
    classes = sorted({row["label"] for row in labels})
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_bytes("".join(f"{i} {name}\r\n" for i, name in enumerate(classes, 1)).encode())
    train_rows, test_rows = labels[::2], labels[1::2]
    (lists / "trainlist01.txt").write_text("".join(f"{r['relpath']} {classes.index(r['label']) + 1}\n" for r in train_rows)
                                           + f"{classes[0]}/gone.mp4 1\n")  # fmt: skip
    (lists / "testlist01.txt").write_text("".join(f"{r['relpath']}\n" for r in test_rows + test_rows[:1]))  # one listed twice
    official = evaluate_stage.run(params, tmp_path / "train", lists, demo_sampled / "decode", demo_sampled / "store.zarr", tmp_path / "eval3")
    assert official.counts["gallery videos"] == len(train_rows) and official.counts["query videos"] == len(test_rows)
    assert official.counts["listed videos not found"] == 1 and f"{classes[0]}/gone.mp4" in official.text()
    # The full fine-tune, a switch (for a GPU; one epoch here).
    tuned = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"finetune": True, "finetune_epochs": 1,
                                                                                     "diagnostics": False})})  # fmt: skip
    evaluate_stage.run(tuned, tmp_path / "train", lists, demo_sampled / "decode", demo_sampled / "store.zarr", tmp_path / "eval4")
    finetuned = json.loads((tmp_path / "eval4" / "metrics.json").read_text())
    for name in ("mscl", "rgb_only", "random"):
        assert 0 <= finetuned[name]["finetune"]["top1"] <= finetuned[name]["finetune"]["top5"] <= 100
        assert finetuned[name]["linear_probe"] == json.loads((tmp_path / "eval3" / "metrics.json").read_text())[name]["linear_probe"]
    assert "mscl_vs_random_finetune_top1" in finetuned["margin"]
    # Trained weights differ from random ones, so their features and scores are their own.
    with pytest.raises(FileNotFoundError, match="train --method mscl"):
        evaluate_stage.run(params, tmp_path / "nowhere", demo_sampled / "demo" / "labels.parquet", demo_sampled / "decode",
                           demo_sampled / "store.zarr", tmp_path / "eval2")  # fmt: skip
