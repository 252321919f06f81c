"""The streaming dataset on the fixture and a small demo: exactly-once sharding over ranks and
workers, determinism, mid-epoch resume, view-2 snapping, and flow that stays true to the RGB through
every augmentation (checked against the stored arrays and against ground truth)."""

import math
import shutil
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import zarr
from torchvision.transforms.v2 import functional as F

from pipeline.data import synth
from pipeline.data.augment import FRA_ANGLES, rotate_vectors
from pipeline.data.dataset import ClipIndex, ClipLoader, MSCLClips, release_snap
from pipeline.data.feed import DeviceFeed
from pipeline.storage.arrays import recode_flow
from pipeline.storage.store import ChunkReader, open_flow, open_frames
from pipeline.storage.tables import read_table
from schemas import store as layout
from schemas.batch import SAMPLE
from schemas.params import DatasetParams

# Small crops and no colour work: these tests are about which pixels and vectors arrive, not speed.
# An item is a clip of the index unless a test says otherwise.
FAST = DatasetParams(crop_size=24, color_jitter_p=0, grayscale_p=0, blur_p=0, epoch="per_clip")
EXACT = FAST.model_copy(update={"flow_norm": "none"})


def make(index, store, params=FAST, **kwargs):
    return MSCLClips(index, store, "dis", params, **kwargs)


def video_id(fixture_flowed, relpath):
    rows = read_table(fixture_flowed / "flow" / "videos.parquet").to_pylist()
    return next(r["video_id"] for r in rows if r["relpath"] == relpath)


def run_epoch(dataset, batch_size=3, num_workers=0, batches=None):
    out = []
    for batch in ClipLoader(dataset, batch_size, num_workers=num_workers):
        out.append(batch)
        if batches is not None and len(out) == batches:
            break
    return out


def same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]) if torch.is_tensor(x[key]) else x[key] == y[key], key


# -- the index --------------------------------------------------------------------------------


def test_index_holds_selected_clips_or_every_candidate(fixture_index):
    selected = ClipIndex.load(fixture_index, sampling=True)
    every = ClipIndex.load(fixture_index, sampling=False)
    table = read_table(fixture_index).to_pandas()
    assert len(selected) == int(table.selected.sum()) == 25 and len(every) == len(table)
    assert (selected.clip_len, selected.stride) == (8, 4)
    for vid, starts in selected.allowed.items():
        assert list(starts) == sorted(table.start[(table.video_id == vid) & table.selected])


def test_snap_goes_to_the_nearest_allowed_start_ties_to_the_earlier():
    index = ClipIndex(np.array(["v"] * 3, dtype=object), np.array([2, 5, 9]), {"v": np.array([2, 5, 9])}, 8, 4)
    assert [index.snap("v", t) for t in (-10, 0, 3, 4, 7, 8, 100)] == [2, 2, 2, 5, 5, 9, 9]


def release_loop(chosen_idx, tar_offset):
    """loading_mscl.py:235-239 of the MSCL release (0b080e5), as written there."""
    new_offset = 0
    if len(chosen_idx):
        for cid in chosen_idx:
            if abs(cid - tar_offset) < abs(cid - new_offset):
                new_offset = cid
    return new_offset


def test_the_release_rule_is_the_authors_loop_and_not_the_nearest():
    index = ClipIndex(np.array(["v"] * 3, dtype=object), np.array([10, 20, 30]), {"v": np.array([10, 20, 30])}, 8, 4)
    targets = (12, 25, -3, 60, 15, 20, 0)
    assert [index.snap("v", t, "release") for t in targets] == [20, 30, 0, 0, 20, 20, 0]  # read off the release by hand
    assert [index.snap("v", t) for t in targets] == [10, 20, 10, 30, 10, 20, 10]
    rng = np.random.default_rng(0)
    for _ in range(500):  # against the release's own loop, on random selections and targets
        allowed = np.unique(rng.integers(0, 200, rng.integers(1, 20)))
        target = int(rng.integers(-80, 280))
        assert release_snap(allowed, target) == release_loop(allowed.tolist(), target)


def test_bad_indexes_are_named(tmp_path, fixture_index, store):
    with pytest.raises(FileNotFoundError, match="missing.parquet.*sample stage"):
        ClipIndex.load(tmp_path / "missing.parquet")
    table = read_table(fixture_index).to_pandas()
    table["selected"] = False
    table.to_parquet(tmp_path / "none.parquet")
    with pytest.raises(ValueError, match="no clip is selected.*dataset.sampling: false"):
        ClipIndex.load(tmp_path / "none.parquet")
    assert len(ClipIndex.load(tmp_path / "none.parquet", sampling=False)) == len(table)
    with pytest.raises(FileNotFoundError, match=r"no flow/raft_small array for video .*run the flow stage"):
        MSCLClips(fixture_index, store, "raft_small", FAST).sample(0)


# -- sharding, determinism, resume ------------------------------------------------------------


@pytest.mark.parametrize("drop_last", [False, True])
def test_every_clip_exactly_once_over_two_ranks_and_two_workers(fixture_index, store, drop_last):
    params = FAST.model_copy(update={"drop_last": drop_last})
    n = len(ClipIndex.load(fixture_index))
    seen, lengths = [], []
    for rank in range(2):
        dataset = make(fixture_index, store, params, rank=rank, world_size=2)
        batches = run_epoch(dataset, batch_size=3, num_workers=2)
        positions = torch.cat([b["position"] for b in batches]).tolist()
        assert positions == list(range(dataset.epoch_length))  # in order, whatever the workers
        lengths.append(len(positions))
        items, padding = torch.cat([b["item"] for b in batches]), torch.cat([b["padding"] for b in batches])
        seen += items[~padding].tolist()
        assert dataset.state_dict()["epoch"] == 1 and dataset.position == 0  # a full pass moves to the next epoch
    assert lengths[0] == lengths[1] == (n // 2 if drop_last else math.ceil(n / 2))
    if drop_last:
        assert len(seen) == len(set(seen)) == 2 * (n // 2)
    else:
        assert sorted(seen) == list(range(n))  # n = 25: one flagged repeat pads rank 1


def test_torch_distributed_decides_the_rank_when_not_given(fixture_index, store):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        dataset = make(fixture_index, store)
        assert (dataset.rank, dataset.world_size) == (0, 1)
    finally:
        torch.distributed.destroy_process_group()
    with pytest.raises(ValueError, match="outside"):
        make(fixture_index, store, rank=2, world_size=2)


def test_same_seed_and_epoch_give_the_same_batches_whatever_the_workers(fixture_index, store):
    params = FAST.model_copy(update={"color_jitter_p": 0.8, "blur_p": 0.5})  # random colour too
    in_process = run_epoch(make(fixture_index, store, params), batch_size=4, num_workers=0)
    two_workers = run_epoch(make(fixture_index, store, params), batch_size=4, num_workers=2)
    same_batches(in_process, two_workers)
    # Another epoch: another order and other augmentations of the same clips.
    later = make(fixture_index, store, params)
    later.set_epoch(1)
    next_epoch = run_epoch(later, batch_size=4)
    order = lambda batches: torch.cat([b["item"] for b in batches]).tolist()  # noqa: E731
    assert order(next_epoch) != order(in_process) and sorted(order(next_epoch)) == sorted(order(in_process))
    reseeded = run_epoch(make(fixture_index, store, params.model_copy(update={"seed": 1})), batch_size=4)
    assert order(reseeded) != order(in_process)


def test_workers_persist_across_epochs_and_follow_the_epoch_the_main_process_is_in(fixture_index, store):
    """A per-video epoch of a small dataset is a few batches; workers started afresh each epoch would
    lose their caches every few steps, and idle at every epoch's end. The loader's one stream runs
    on from epoch to epoch in the same workers, and still plays each epoch's own plan."""
    params = FAST.model_copy(update={"epoch": "per_video"})
    in_process, pooled = make(fixture_index, store, params), make(fixture_index, store, params)
    plain, persistent = ClipLoader(in_process, 2), ClipLoader(pooled, 2, num_workers=2)
    workers = []
    for epoch in range(3):
        batches = list(persistent)
        workers.append([w.pid for w in persistent._stream._workers])
        same_batches(list(plain), batches)
        assert pooled.epoch == in_process.epoch == epoch + 1
    assert workers[0] == workers[1] == workers[2]  # the same two processes throughout
    first = make(fixture_index, store, params)  # and a resume lands in the right epoch and place of the plan
    first.load_state_dict({**pooled.state_dict(), "epoch": 1, "position": 2})
    second = make(fixture_index, store, params)
    second.set_epoch(1)
    same_batches(list(ClipLoader(first, 2, num_workers=2)), list(ClipLoader(second, 2))[1:])


def test_resume_mid_epoch_gives_the_remaining_sequence(fixture_index, store):
    reference = run_epoch(make(fixture_index, store), batch_size=4, num_workers=2)
    first = make(fixture_index, store)
    head = run_epoch(first, batch_size=4, num_workers=2, batches=3)  # stops with batches still prefetched
    state = first.state_dict()
    assert state["position"] == 12 and state["epoch"] == 0
    resumed = make(fixture_index, store)
    resumed.load_state_dict(state)
    tail = run_epoch(resumed, batch_size=4, num_workers=2)
    same_batches(head, reference[:3])
    same_batches(tail, reference[3:])
    with pytest.raises(ValueError, match="world_size=1.*this run has 2"):
        make(fixture_index, store, rank=0, world_size=2).load_state_dict(state)


# -- what a sample holds ----------------------------------------------------------------------


def test_sample_keys_dtypes_and_shapes(fixture_index, store):
    sample = make(fixture_index, store, DatasetParams(crop_size=32, epoch="per_clip", flow_norm="max_magnitude")).sample(3)
    assert set(sample) == set(SAMPLE)
    for key, (dtype, _, _) in SAMPLE.items():
        if dtype != "str":
            assert str(sample[key].dtype) == f"torch.{dtype}", key
    assert sample["rgb"].shape == (2, 3, 8, 32, 32)
    assert sample["flow"].shape == sample["flow_rot"].shape == (2, 2, 8, 32, 32)
    norms = sample["flow"].float().norm(dim=1).amax(dim=(-1, -2))  # per view and frame
    assert ((norms <= 1.001) & ((norms > 0.999) | (norms == 0))).all()  # max_magnitude: each frame's longest is 1
    assert "flow_rot" not in make(fixture_index, store, FAST.model_copy(update={"rotation": False})).sample(3)


def test_view_two_snaps_to_an_allowed_start_within_the_window(fixture_index, store):
    for sampling in (True, False):
        params = FAST.model_copy(update={"view2_window": 8, "sampling": sampling})
        dataset = make(fixture_index, store, params)
        index = dataset.index
        moved = 0
        for item in range(len(index)):
            sample = dataset.sample(item)
            s1, s2 = sample["start"].tolist()
            assert s1 == index.starts[item] and s2 in index.allowed[sample["video_id"]]
            assert s2 in {index.snap(sample["video_id"], s1 + d) for d in range(-8, 9)}
            moved += s2 != s1
        assert moved > len(index) // 3
    still = make(fixture_index, store, FAST.model_copy(update={"view2_window": 0}))
    assert all(still.sample(i)["start"][0] == still.sample(i)["start"][1] for i in range(len(still.index)))


def test_views_are_the_stored_frames_and_flows_at_start_plus_j_stride(fixture_index, fixture_flowed, store):
    """Undo nothing, redo everything: the stored clip, cropped, resized and flipped as the sample
    says, is exactly the sample's RGB, and its flow scaled and u-negated is the sample's flow."""
    dataset = make(fixture_index, store, EXACT.model_copy(update={"flip": 0.5}))
    flips = set()
    for item in range(0, len(dataset.index), 3):
        sample = dataset.sample(item)
        vid = sample["video_id"]
        frames, flows = open_frames(store, vid), open_flow(store, "dis", vid)
        for view in range(2):
            start = int(sample["start"][view])
            top, left, h, w = sample["crop"][view].tolist()
            idx = [start + 4 * j for j in range(8)]
            rgb = F.resized_crop(torch.from_numpy(frames.oindex[idx]).permute(0, 3, 1, 2), top, left, h, w, [24, 24], antialias=True)
            flow = torch.from_numpy(flows.oindex[idx]).permute(0, 3, 1, 2)[..., top : top + h, left : left + w].float()
            flow = F.resize(flow, [24, 24], antialias=True) * torch.tensor([24 / w, 24 / h]).view(1, 2, 1, 1)
            if sample["flip"][view]:
                rgb, flow = rgb.flip(-1), flow.flip(-1) * torch.tensor([-1.0, 1.0]).view(1, 2, 1, 1)
            flips.add(bool(sample["flip"][view]))
            assert torch.equal(sample["rgb"][view], rgb.permute(1, 0, 2, 3))
            assert torch.allclose(sample["flow"][view].float(), flow.permute(1, 0, 2, 3), atol=2e-3, rtol=1e-3)
    assert flips == {True, False}


def warp_error(frame_a, frame_b, flow, margin=6):
    """Mean |frame_a - frame_b sampled at x + flow|: small when flow moves frame a onto frame b."""
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    warped = cv2.remap(frame_b, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR)
    return float(np.abs(warped.astype(np.float32) - frame_a.astype(np.float32))[margin:-margin, margin:-margin].mean())


@pytest.mark.parametrize("batched", [False, True], ids=["by_view", "batched"])
def test_augmented_flow_still_moves_each_augmented_frame_onto_the_next(fixture_flowed, store, batched):
    """With stride 1 a view holds consecutive frames, so flow j must carry RGB frame j to RGB frame
    j+1 after crop, resize and flip; with u not negated, or the flow of another pair, it must not."""
    vid = video_id(fixture_flowed, "object_on_pan.mp4")
    index = ClipIndex(np.array([vid], dtype=object), np.array([4]), {vid: np.array([4])}, clip_len=6, stride=1)
    params = EXACT.model_copy(update={"crop_size": 96, "crop_scale": (0.6, 0.6), "flip": 1.0, "view2_window": 0})
    sample = MSCLClips(index, store, "dis", params).sample(0, batched=batched)
    assert sample["flip"].all()
    rgb = sample["rgb"][0].permute(1, 2, 3, 0).numpy()  # (T, H, W, 3)
    flow = sample["flow"][0].permute(1, 2, 3, 0).float().numpy()  # (T, H, W, 2)
    for j in range(5):
        right = warp_error(rgb[j], rgb[j + 1], flow[j])
        unflipped_u = warp_error(rgb[j], rgb[j + 1], flow[j] * np.array([-1.0, 1.0], np.float32))
        still = warp_error(rgb[j], rgb[j + 1], np.zeros_like(flow[j]))
        assert right < 0.6 * still and right < 0.6 * unflipped_u, (j, right, unflipped_u, still)


@pytest.mark.parametrize("batched", [False, True], ids=["by_view", "batched"])
def test_crop_and_resize_scale_flow_as_the_ground_truth_says(fixture_flowed, fixture_dir, store, batched):
    """A tall crop resized to a square stretches x and y differently: the flow must follow the
    ground truth's motion transformed the same way (an independent cv2 crop and resize of it)."""
    vid = video_id(fixture_flowed, "global_pan.avi")
    truth = synth.SceneTruth.load(fixture_dir / "global_pan.avi.truth.json")
    scale = open_frames(store, vid).attrs["scale"]
    index = ClipIndex(np.array([vid], dtype=object), np.array([2]), {vid: np.array([2])}, clip_len=8, stride=4)
    params = EXACT.model_copy(update={"crop_size": 48, "crop_scale": (0.3, 0.3), "crop_ratio": (0.5, 0.5), "flip": 0.0})
    sample = MSCLClips(index, store, "dis", params).sample(0, batched=batched)
    top, left, h, w = sample["crop"][0].tolist()
    assert w / h == pytest.approx(0.5, rel=0.05)  # resize factors 48/w and 48/h differ by 2x
    for j in range(8):
        gt, valid = synth.truth_flow(truth, 2 + 4 * j, scale)
        gt = cv2.resize(gt[top : top + h, left : left + w], (48, 48), interpolation=cv2.INTER_AREA) * np.array([48 / w, 48 / h], np.float32)
        got = sample["flow"][0][:, j].float().numpy()
        assert np.median(got[0]) == pytest.approx(np.median(gt[..., 0]), abs=0.08)
        assert np.median(got[1]) == pytest.approx(np.median(gt[..., 1]), abs=0.08)
    assert abs(np.median(gt[..., 0]) / np.median(gt[..., 1])) > 3  # x stretched 4x as much as y relative to the source ratio


@pytest.mark.parametrize("batched", [False, True], ids=["by_view", "batched"])
def test_rotated_flow_is_the_flow_turned_by_the_sample_angle(fixture_index, store, batched):
    dataset = make(fixture_index, store, FAST)
    angles = set()
    for item in range(len(dataset.index)):
        sample = dataset.sample(item, batched=batched)
        angle = float(sample["angle"])
        assert any(angle == pytest.approx(a) for a in FRA_ANGLES)
        angles.add(round(angle, 4))
        flow, rotated = sample["flow"].float(), sample["flow_rot"].float()
        assert torch.allclose(rotated, rotate_vectors(flow.transpose(1, 2), angle).transpose(1, 2), atol=2e-3)
        assert torch.allclose(rotated.norm(dim=1), flow.norm(dim=1), atol=2e-3)
    assert len(angles) >= 5


# -- real loading -----------------------------------------------------------------------------


def test_dataloader_with_two_workers_runs_a_full_epoch_on_the_demo(demo_sampled):
    dataset = MSCLClips(demo_sampled / "sample" / "clips.parquet", demo_sampled / "store.zarr", "dis",
                        DatasetParams(crop_size=64, epoch="per_clip"))  # fmt: skip
    batches = list(DeviceFeed(ClipLoader(dataset, 8, num_workers=2), "cpu"))
    items = torch.cat([b["item"] for b in batches]).tolist()
    assert sorted(items) == list(range(len(dataset.index))) and len(dataset.index) > 40
    assert {vid for b in batches for vid in b["video_id"]} == set(dataset.index.allowed)  # every video
    for batch in batches:  # augmented on the device (here the CPU), ready for the model
        assert batch["rgb"].dtype == torch.float32 and batch["rgb"].shape[1:] == (2, 3, 8, 64, 64)
        assert -3 < batch["rgb"].mean() < 3
        assert batch["flow"].dtype == torch.float32 and batch["flow"].shape[1:] == (2, 2, 8, 64, 64)
        assert torch.isfinite(batch["flow"]).all() and torch.isfinite(batch["flow_rot"]).all()


def test_store_through_an_fsspec_url_gives_the_same_batches(fixture_index, store):
    local = run_epoch(make(fixture_index, store), batch_size=4, num_workers=2, batches=2)
    url = run_epoch(make(fixture_index, f"file://{store}"), batch_size=4, num_workers=2, batches=2)
    same_batches(local, url)


def test_the_video_cache_changes_nothing_but_speed_and_stays_in_budget(fixture_index, store):
    plain = run_epoch(make(fixture_index, store), batch_size=4)
    cached_dataset = make(fixture_index, store, FAST.model_copy(update={"cache_mb": 3}))
    cached = run_epoch(cached_dataset, batch_size=4)
    same_batches(plain, cached)
    assert 0 < cached_dataset._cache_bytes <= 3 * 2**20  # bounded: older videos were dropped


def test_a_sample_read_from_the_store_decodes_each_chunk_once(fixture_index, store, monkeypatch):
    """Without the cache, a sample's two views are read together where they share chunks: the
    same pixels as reading each view alone, and no chunk read twice."""
    dataset = make(fixture_index, store, EXACT)
    reads: list[tuple[int, int]] = []
    chunk = ChunkReader.chunk

    def counting(self, index):
        reads.append((id(self), index))
        return chunk(self, index)

    monkeypatch.setattr(ChunkReader, "chunk", counting)
    shared = 0
    for item in range(len(dataset.index)):
        reads.clear()
        video, starts, _, _ = dataset.draw(item)
        together = dataset.read_views(video, starts)
        assert reads and len(reads) == len(set(reads)), "a chunk was read twice for one sample"
        shared += len(reads) < 2 * 2 * 4  # two arrays, two views of 4 or more chunks each, unless they share
        for (rgb, flow), start in zip(together, starts, strict=True):
            alone_rgb, alone_flow = dataset.read(video, start)
            assert torch.equal(rgb, alone_rgb) and torch.equal(flow, alone_flow)
            with_zarr_rgb = open_frames(store, video)[start : start + 29 : 4]
            assert np.array_equal(rgb.permute(0, 2, 3, 1).numpy(), with_zarr_rgb)  # what zarr itself reads
    assert shared > 0  # the fixture has samples whose views share chunks


def test_fixed_point_flow_reads_the_same_with_and_without_the_cache(fixture_index, store, tmp_path):
    """The cache keeps fixed-point flow as stored (int16) and converts each clip: the same batches
    as reading every clip from the store, in the dtype a float16 store gives."""
    fixed = tmp_path / "store.zarr"
    shutil.copytree(store, fixed)
    group = layout.flow_group("dis")
    for video in filter(Path.is_dir, (fixed / group).iterdir()):
        attrs = zarr.open_array(str(video), mode="r").attrs.asdict()
        recode_flow(fixed, "dis", video.name, 1 / 32, attrs)
    plain = run_epoch(make(fixture_index, fixed, EXACT), batch_size=4, batches=2)
    cached_dataset = make(fixture_index, fixed, EXACT.model_copy(update={"cache_mb": 64}))
    cached = run_epoch(cached_dataset, batch_size=4, batches=2)
    same_batches(plain, cached)
    assert all(array.dtype == np.int16 for array, _ in cached_dataset._cache.values() if array.ndim == 4 and array.shape[-1] == 2)
    assert cached[0]["flow"].dtype == run_epoch(make(fixture_index, store, EXACT), batch_size=4, batches=1)[0]["flow"].dtype


def test_rgb_only_reads_no_flow_and_keeps_the_same_rgb(fixture_index, store):
    both = make(fixture_index, store).sample(5)
    rgb_only = MSCLClips(fixture_index, store, "no-such-flow-method", FAST, with_flow=False).sample(5)
    assert "flow" not in rgb_only and "flow_rot" not in rgb_only
    assert torch.equal(both["rgb"], rgb_only["rgb"]) and torch.equal(both["crop"], rgb_only["crop"])


# -- the authors' epoch and flow scaling ------------------------------------------------------


def test_a_per_video_epoch_has_every_video_once_at_a_random_allowed_start(fixture_index, store):
    params = FAST.model_copy(update={"epoch": "per_video"})
    index = ClipIndex.load(fixture_index)
    assert len(index.videos) == 5 < len(index)
    starts: dict[str, set[int]] = {}
    for epoch in range(6):
        seen = []
        for rank in range(2):
            dataset = make(fixture_index, store, params, rank=rank, world_size=2)
            dataset.set_epoch(epoch)
            batches = run_epoch(dataset, batch_size=2, num_workers=2)
            assert dataset.epoch_length == 3  # 5 videos over 2 ranks: one flagged repeat
            for batch in batches:
                for vid, item, start, padding in zip(batch["video_id"], batch["item"], batch["start"][:, 0], batch["padding"], strict=True):
                    assert vid == index.videos[int(item)] and int(start) in index.allowed[vid]
                    if not padding:
                        seen.append(vid)
                        starts.setdefault(vid, set()).add(int(start))
        assert sorted(seen) == index.videos  # every video exactly once per epoch
    assert sum(len(s) for s in starts.values()) > len(starts)  # view 1 moves between the allowed starts
    assert make(fixture_index, store, params).state_dict()["num_items"] == 5


def test_frame_max_magnitude_scales_the_whole_stored_frame_before_the_crop(fixture_index, store):
    """The authors' flow scaling: each stored flow frame over its longest vector, then cropped and
    resized like the RGB (vectors scaled by the resize factors)."""
    dataset = make(fixture_index, store, FAST.model_copy(update={"flow_norm": "frame_max_magnitude", "flip": 0.0}))
    for item in (0, 7, 13):
        sample = dataset.sample(item)
        flows = open_flow(store, "dis", sample["video_id"])
        start = int(sample["start"][0])
        top, left, h, w = sample["crop"][0].tolist()
        stored = torch.from_numpy(flows.oindex[[start + 4 * j for j in range(8)]]).permute(0, 3, 1, 2).float()
        whole = stored / stored.norm(dim=1).amax(dim=(1, 2)).view(-1, 1, 1, 1)
        expected = F.resize(whole[..., top : top + h, left : left + w], [24, 24], antialias=True) * torch.tensor([24 / w, 24 / h]).view(1, 2, 1, 1)
        assert torch.allclose(sample["flow"][0].float(), expected.permute(1, 0, 2, 3), atol=2e-3, rtol=1e-3)
