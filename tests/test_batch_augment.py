"""The batched augmentation the trainer runs on its device is the per-sample augmentation: the same
draws, then the same pixels and vectors (exactly, but for the blur's rounding), on padded batches
of several stored sizes, view by view with torch's resize (the CPU's way) and through the banded
passes (the GPU's way, run here on the CPU); and the loader and the feed keep the resume point."""

import math

import pytest
import torch
from torchvision.transforms import RandomResizedCrop, v2
from torchvision.transforms.v2 import functional as F

from pipeline.data.augment import FRA_ANGLES, ViewAugment, hflip, rotate_vectors, seed_cpu, view_flow
from pipeline.data.batch_augment import augment_batch, geometry, resample, resample_by_view, resample_pixels
from pipeline.data.dataset import ClipLoader, MSCLClips, collate_raw
from pipeline.data.feed import DeviceFeed
from schemas.batch import RAW, SAMPLE
from schemas.params import DatasetParams

COLOUR = DatasetParams(crop_size=40, color_jitter_p=0.5, grayscale_p=0.5, blur_p=0.5)


def composed_reference(params: DatasetParams, rgb, flow, seed):
    """The augmentation as it was written before the draws were split from their application:
    torchvision's random transforms composed and run in a generator seeded with `seed`."""
    kernel = max(3, int(0.1 * params.crop_size) // 2 * 2 + 1)
    colour = v2.Compose([
        v2.RandomApply([v2.ColorJitter(*params.color_jitter)], p=params.color_jitter_p),
        v2.RandomGrayscale(p=params.grayscale_p),
        v2.RandomApply([v2.GaussianBlur(kernel, sigma=params.blur_sigma)], p=params.blur_p),
    ])  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        seed_cpu(seed)
        box = RandomResizedCrop.get_params(rgb, list(params.crop_scale), list(params.crop_ratio))
        flipped = bool(torch.rand(()) < params.flip)
        rgb = F.resized_crop(rgb, *box, [params.crop_size, params.crop_size], antialias=True)
        flow = view_flow(flow, box, params.crop_size, params.flow_norm, params.flow_bound, params.flow_camera)
        if flipped:
            rgb, flow = hflip(rgb, flow)
        return colour(rgb), flow, tuple(box), flipped


@pytest.mark.parametrize("params", [COLOUR, COLOUR.model_copy(update={"color_jitter": (0.0, 0.4, 0.0, 0.1), "flip": 1.0})])
def test_the_draws_are_the_numbers_torchvision_transforms_draw(params):
    augment = ViewAugment(params)
    rgb = torch.randint(0, 256, (3, 3, 48, 64), dtype=torch.uint8)
    flow = torch.randn(3, 2, 48, 64).half()
    kinds = set()
    for seed in range(60):
        rgb_a, flow_a, box, flipped = composed_reference(params, rgb, flow, seed)
        rgb_b, flow_b, geometry_b = augment(rgb, flow, seed)
        draws = augment.draw(seed, 48, 64)
        assert torch.equal(rgb_a, rgb_b) and torch.equal(flow_a, flow_b), seed
        assert (box, flipped) == (draws.box, draws.flipped) == ((geometry_b.top, geometry_b.left, geometry_b.height, geometry_b.width), geometry_b.flipped)
        kinds.add((draws.jitter is not None, draws.grayscale, draws.blur_sigma > 0))
    assert len(kinds) == 8  # every combination of the three colour transforms was drawn and matched


def per_sample(dataset: MSCLClips, item: int):
    """The sample augmented view by view with torchvision's kernels (ViewAugment), as (V, C, T, S, S)."""
    video_id, starts, angle, seeds = dataset.draw(item)
    rgbs, flows = [], []
    for (rgb, flow), seed in zip(dataset.read_views(video_id, starts), seeds, strict=True):
        rgb, flow, _ = dataset.augment(rgb, flow, seed)
        rgbs.append(rgb.transpose(0, 1))
        flows.append(flow.transpose(0, 1))
    flow = torch.stack(flows)
    return torch.stack(rgbs), flow, rotate_vectors(flow.transpose(1, 2), angle).transpose(1, 2)


@pytest.mark.parametrize("batched", [False, True], ids=["by_view", "batched"])
@pytest.mark.parametrize("update", [
    {"blur_p": 0.0},
    {"blur_p": 0.0, "flow_camera": "median", "flip": 1.0},
    {"blur_p": 0.0, "flow_norm": "max_magnitude", "color_jitter_p": 1.0, "crop_scale": (0.08, 1.0)},
    {"blur_p": 0.0, "flow_norm": "fixed", "grayscale_p": 1.0},
    {"blur_p": 1.0, "flow_norm": "none"},
], ids=["defaults", "camera_flip", "crop_norm_jitter", "fixed_gray", "blur"])  # fmt: skip
def test_the_batched_pass_is_the_per_sample_path(fixture_index, store, batched, update):
    """A batch of the fixture's videos (171 and 170 pixels wide: padded) through augment_batch against
    each view through ViewAugment. RGB: equal, but for the blur, which rounds once per 1-D pass where
    torchvision's 2-D kernel rounds once: then at most 1 level apart in under 0.1% of the pixels.
    Flow: equal by view (torch's own resize); through the banded passes within float32 rounding, as
    their sums run in another order."""
    params = COLOUR.model_copy(update={"epoch": "per_clip", **update})
    dataset = MSCLClips(fixture_index, store, "dis", params)
    items = list(range(len(dataset.index)))
    raw = collate_raw([dataset.raw_sample(i) for i in items])
    assert len({tuple(s) for s in raw["size"].tolist()}) > 1  # several stored sizes, padded to one
    out = augment_batch(raw, params, batched=batched)
    tolerance = 0 if batched is False else 1e-5
    for row, item in enumerate(items):
        rgb, flow, flow_rot = per_sample(dataset, item)
        diff = (out["rgb"][row].int() - rgb.int()).abs()
        if params.blur_p == 0:
            assert diff.max() == 0, item
        else:
            assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3, item
        scale = max(1.0, float(flow.abs().max()))
        assert torch.allclose(out["flow"][row], flow, rtol=0, atol=tolerance * scale), item
        assert torch.allclose(out["flow_rot"][row], flow_rot, rtol=0, atol=tolerance * scale + 1e-6), item


def test_the_banded_passes_are_torchs_resize_for_any_box_and_flip():
    """resample_pixels is torch's uint8 antialiased resize to the pixel (fixed-point weights, each
    pass rounded), resample its float one; upscales and downscales alike, flipped or not."""
    torch.manual_seed(0)
    n, size = 24, 37
    heights, widths = torch.randint(5, 90, (n,)), torch.randint(5, 120, (n,))
    tops, lefts = torch.randint(0, 30, (n,)), torch.randint(0, 30, (n,))
    crop = torch.stack([tops, lefts, heights, widths], 1)
    flip = torch.rand(n) < 0.5
    pixels = torch.randint(0, 256, (n, 2, 120, 150, 3), dtype=torch.uint8).permute(0, 1, 4, 2, 3)  # channels-last frames
    values = torch.randn(n, 2, 2, 120, 150)
    geo = geometry(crop, flip, size)
    by_view = resample_by_view(pixels, crop, flip, size)  # torch's SIMD kernel for 3-channel uint8
    assert torch.equal(resample_pixels(pixels.reshape(n, 6, 120, 150), geo).to(torch.uint8), by_view.reshape(n, 6, size, size))
    assert torch.equal(by_view, resample_by_view(pixels.contiguous().view(n, 1, 6, 120, 150), crop, flip, size).reshape(by_view.shape))
    floats = resample(values.view(n, 4, 120, 150), geo).view(n, 2, 2, size, size)
    assert torch.allclose(floats, resample_by_view(values, crop, flip, size), rtol=0, atol=2e-5)


def test_flow_vectors_follow_crop_flip_and_rotation_on_a_linear_field():
    """u = 0.1 x, v = -0.2 y in stored pixels: after a crop at (top, left) resized by (sy, sx) and a
    flip, output pixel (Y, X) sits at stored x = left + (S - 1 - X + 0.5)/sx - 0.5 (y likewise, not
    mirrored), and its vector is (-sx * 0.1 x, sy * -0.2 y); FRA then turns it by the sample's angle."""
    params = DatasetParams(crop_size=32, flow_norm="none", color_jitter_p=0, grayscale_p=0, blur_p=0)
    h, w, t = 48, 64, 2
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    flow = torch.stack([0.1 * x, -0.2 * y], dim=-1).expand(1, 2, t, h, w, 2).half()
    top, left, bh, bw = 8, 4, 16, 40
    raw = {
        "rgb": torch.zeros(1, 2, t, h, w, 3, dtype=torch.uint8), "flow": flow, "size": torch.tensor([[h, w]]),
        "crop": torch.tensor([[[top, left, bh, bw]] * 2]), "flip": torch.tensor([[True, False]]),
        "jitter": torch.zeros(1, 2, dtype=torch.bool), "jitter_order": torch.zeros(1, 2, 4, dtype=torch.int64),
        "jitter_factor": torch.ones(1, 2, 4), "grayscale": torch.zeros(1, 2, dtype=torch.bool), "blur_sigma": torch.zeros(1, 2),
        "rotation": torch.tensor([3]), "angle": torch.tensor([FRA_ANGLES[3]]), "start": torch.zeros(1, 2, dtype=torch.int64),
        "video_id": ["v"], "item": torch.tensor([0]), "position": torch.tensor([0]), "padding": torch.tensor([False]),
    }  # fmt: skip
    s = params.crop_size
    sx, sy = s / bw, s / bh
    cols = torch.arange(s, dtype=torch.float32)
    for batched in (False, True):
        out = augment_batch(raw, params, batched=batched)
        flipped, plain = out["flow"][0, 0], out["flow"][0, 1]  # (2, T, S, S)
        x_plain = left + (cols + 0.5) / sx - 0.5
        x_flipped = left + (s - 1 - cols + 0.5) / sx - 0.5
        y_rows = top + (cols + 0.5) / sy - 0.5
        inner = slice(3, -3)  # away from the crop's edges, where the resize clamps
        assert torch.allclose(plain[0, 0, 5, inner], sx * 0.1 * x_plain[inner], atol=2e-2)
        assert torch.allclose(flipped[0, 0, 5, inner], -sx * 0.1 * x_flipped[inner], atol=2e-2)
        assert torch.allclose(plain[1, 0, inner, 5], sy * -0.2 * y_rows[inner], atol=2e-2)
        c, sn = math.cos(FRA_ANGLES[3]), math.sin(FRA_ANGLES[3])
        u, v = out["flow"][0, :, 0], out["flow"][0, :, 1]
        rot = out["flow_rot"][0]
        assert torch.allclose(rot[:, 0], c * u - sn * v, atol=1e-5) and torch.allclose(rot[:, 1], sn * u + c * v, atol=1e-5)


def test_a_worker_sends_the_raw_batch_the_schema_declares(fixture_index, store):
    dataset = MSCLClips(fixture_index, store, "dis", COLOUR.model_copy(update={"epoch": "per_clip"}))
    batch = next(iter(ClipLoader(dataset, 4, num_workers=1)))
    assert set(batch) == set(RAW)
    for key, (dtype, _, _) in RAW.items():
        if dtype != "str":
            assert str(batch[key].dtype) == f"torch.{dtype}", key
    assert batch["rgb"].shape[:3] == (4, 2, 8) and batch["rgb"].shape[-1] == 3  # stored size, not cropped
    sample = dataset.sample(0)
    assert set(sample) == set(SAMPLE)


def test_the_feed_hands_out_each_batch_once_and_resumes_after_the_last_it_handed_out(fixture_index, store):
    """The feed pulls a batch ahead of the step; its state_dict is the point after the batch it last
    handed out, so a run resumed from it sees the batches the killed run had not stepped on."""
    params = COLOUR.model_copy(update={"epoch": "per_clip", "blur_p": 0.0})
    reference = [b["position"].tolist() for b in DeviceFeed(ClipLoader(MSCLClips(fixture_index, store, "dis", params), 4), "cpu")]
    assert len(reference) >= 4
    dataset = MSCLClips(fixture_index, store, "dis", params)
    feed = DeviceFeed(ClipLoader(dataset, 4, num_workers=2), "cpu")
    seen = []
    for batch in feed:
        seen.append(batch["position"].tolist())
        if len(seen) == 2:
            state = feed.state_dict()
            break
    assert dataset.position == 12 and state["position"] == 8  # the dataset is a batch ahead; the feed's state is not
    resumed = MSCLClips(fixture_index, store, "dis", params)
    resumed.load_state_dict(state)
    rest = [b["position"].tolist() for b in DeviceFeed(ClipLoader(resumed, 4, num_workers=2), "cpu")]
    assert seen + rest == reference


def test_the_stream_runs_on_into_the_next_epoch_in_the_same_workers(fixture_index, store):
    """At an epoch's end the workers are already reading the next epoch's first batches: the next
    pass takes them from the same stream, and each epoch still follows its own plan."""
    params = COLOUR.model_copy(update={"epoch": "per_video", "blur_p": 0.0})
    dataset = MSCLClips(fixture_index, store, "dis", params)
    loader = ClipLoader(dataset, 2, num_workers=2, prefetch_factor=2)
    first = list(loader)
    stream = loader._stream
    second = list(loader)
    assert loader._stream is stream  # not restarted at the epoch boundary
    plain = MSCLClips(fixture_index, store, "dis", params)
    plain.set_epoch(1)
    expected = list(ClipLoader(plain, 2))
    assert [b["item"].tolist() for b in second] == [b["item"].tolist() for b in expected]
    assert [b["epoch"].tolist() for b in first] == [[0] * len(b["item"]) for b in first]
    for got, want in zip(second, expected, strict=True):
        assert torch.equal(got["crop"], want["crop"]) and torch.equal(got["rgb"], want["rgb"])
