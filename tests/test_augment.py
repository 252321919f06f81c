"""Paired augmentations: flow vectors follow the geometry, FRA rotates by the stated angles, and a
view's randomness depends on its seed alone."""

import math

import pytest
import torch

from pipeline.data.augment import (
    FRA_ANGLES,
    ViewAugment,
    hflip,
    normalise_flow,
    resized_crop_flow,
    rotate_vectors,
    subtract_camera,
    view_flow,
)
from schemas.params import DatasetParams


def ramp_flow(t=3, h=24, w=32) -> torch.Tensor:
    """(T, 2, H, W) flow whose u grows to the right and v downwards: every position is distinct."""
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([torch.stack([0.1 * x + k, -0.2 * y - k]) for k in range(t)])


def test_hflip_mirrors_the_map_and_negates_u_only():
    flow = ramp_flow()
    rgb = torch.randint(0, 256, (3, 3, 24, 32), dtype=torch.uint8)
    rgb_f, flow_f = hflip(rgb, flow)
    assert torch.equal(rgb_f, rgb.flip(-1))
    assert torch.equal(flow_f[:, 0], -flow[:, 0].flip(-1))
    assert torch.equal(flow_f[:, 1], flow[:, 1].flip(-1))
    # Twice is the identity.
    assert torch.equal(hflip(*hflip(rgb, flow))[1], flow)


def test_resized_crop_scales_vectors_by_the_resize_factors():
    flow = torch.zeros(2, 2, 60, 80)
    flow[:, 0], flow[:, 1] = 3.0, -2.0  # a uniform motion survives any resampling unchanged
    box = (10, 20, 40, 60)  # top, left, height, width
    flow_c = resized_crop_flow(flow, box, (80, 30))  # height x2, width x0.5
    assert flow_c.shape == (2, 2, 80, 30)
    assert torch.allclose(flow_c[:, 0], torch.tensor(1.5)) and torch.allclose(flow_c[:, 1], torch.tensor(-4.0))


def test_resized_crop_of_a_linear_field_matches_the_transformed_field():
    """u(x) = 0.1x in input pixels. After crop at `left` and resize by s, output column X sits at
    input x = (X + 0.5)/s - 0.5 + left, and its vector is s * 0.1 * x."""
    flow = ramp_flow(t=1, h=40, w=64)
    out = resized_crop_flow(flow, (0, 8, 40, 32), (40, 64))
    s = 64 / 32
    x_in = (torch.arange(64) + 0.5) / s - 0.5 + 8
    expected = s * 0.1 * x_in
    assert torch.allclose(out[0, 0, 20, 2:-2], expected[2:-2], atol=1e-4)  # away from the clamped borders


@pytest.mark.parametrize("k", range(8))
def test_rotation_keeps_magnitudes_and_turns_every_vector_by_the_angle(k):
    angle = FRA_ANGLES[k]
    assert angle == pytest.approx((0.2 + 0.2 * k) * math.pi)
    flow = torch.randn(4, 2, 16, 16, dtype=torch.float64)
    rotated = rotate_vectors(flow, angle)
    assert torch.allclose(rotated.norm(dim=1), flow.norm(dim=1))
    turn = torch.atan2(rotated[:, 1], rotated[:, 0]) - torch.atan2(flow[:, 1], flow[:, 0])
    assert torch.allclose(torch.remainder(turn, 2 * math.pi), torch.full_like(turn, angle % (2 * math.pi)), atol=1e-9)


def test_fra_angles_never_include_the_identity():
    assert len(FRA_ANGLES) == 8
    assert math.degrees(FRA_ANGLES[0]) == pytest.approx(36) and math.degrees(FRA_ANGLES[-1]) == pytest.approx(288)
    assert all(math.cos(a) < 0.81 for a in FRA_ANGLES)  # at least 36 degrees away from no rotation


def test_flow_normalisation_modes():
    flow = torch.zeros(3, 2, 8, 8)
    flow[0, 0, 2, 3] = 6.0
    flow[0, 1, 2, 3] = 8.0  # longest vector of frame 0: 10 px
    flow[1, 0] = 30.0  # frame 1: 30 px everywhere; frame 2: still
    by_max = normalise_flow(flow, "max_magnitude")
    assert by_max[0].norm(dim=0).max() == pytest.approx(1.0) and by_max[1].norm(dim=0).max() == pytest.approx(1.0)
    assert by_max[0, 1, 2, 3] == pytest.approx(0.8) and torch.equal(by_max[2], flow[2])  # a still frame stays 0
    fixed = normalise_flow(flow, "fixed", 20.0)
    assert fixed[0, 1, 2, 3] == pytest.approx(0.4) and (fixed[1, 0] == 1.0).all()  # clipped to [-1, 1]
    assert torch.equal(normalise_flow(flow, "none"), flow)
    with pytest.raises(ValueError, match="max_magnitude"):
        normalise_flow(flow, "bogus")


def test_view_augment_depends_on_its_seed_only_and_leaves_the_callers_rng_alone():
    augment = ViewAugment(DatasetParams(crop_size=32))
    rgb = torch.randint(0, 256, (4, 3, 48, 64), dtype=torch.uint8)
    flow = torch.randn(4, 2, 48, 64).half()
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = augment(rgb, flow, seed=7)
    assert torch.equal(torch.rand(3), before)  # the caller's stream did not move
    torch.manual_seed(999)
    b = augment(rgb, flow, seed=7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    c = augment(rgb, flow, seed=8)
    assert not torch.equal(a[0], c[0])
    assert a[0].dtype == torch.uint8 and a[0].shape == (4, 3, 32, 32) and a[1].shape == (4, 2, 32, 32)


def test_colour_switches_do_not_move_the_geometry_and_never_touch_flow():
    rgb = torch.randint(0, 256, (2, 3, 48, 64), dtype=torch.uint8)
    flow = torch.randn(2, 2, 48, 64)
    plain = ViewAugment(DatasetParams(crop_size=24, color_jitter_p=0, grayscale_p=0, blur_p=0))
    heavy = ViewAugment(DatasetParams(crop_size=24, color_jitter_p=1, grayscale_p=1, blur_p=1))
    geometries = set()
    for seed in range(10):
        rgb_a, flow_a, geo_a = plain(rgb, flow, seed)
        rgb_b, flow_b, geo_b = heavy(rgb, flow, seed)
        assert geo_a == geo_b and torch.equal(flow_a, flow_b)
        assert not torch.equal(rgb_a, rgb_b)
        assert torch.equal(rgb_b[:, 0], rgb_b[:, 1])  # grayscale: three equal channels
        geometries.add(geo_a)
    assert len(geometries) == 10  # crops and flips differ across seeds
    assert {g.flipped for g in geometries} == {True, False}


def test_crop_box_follows_the_params():
    params = DatasetParams(crop_size=16, crop_scale=(0.25, 0.25), crop_ratio=(2.0, 2.0), flip=0.0)
    augment = ViewAugment(params)
    rgb, flow = torch.zeros(1, 3, 64, 128, dtype=torch.uint8), torch.zeros(1, 2, 64, 128)
    for seed in range(5):
        _, _, geo = augment(rgb, flow, seed)
        assert geo.width * geo.height == pytest.approx(0.25 * 64 * 128, rel=0.05)
        assert geo.width / geo.height == pytest.approx(2.0, rel=0.05)
        assert 0 <= geo.top <= 64 - geo.height and 0 <= geo.left <= 128 - geo.width and not geo.flipped


def test_camera_compensation_removes_a_pan_and_keeps_the_objects_own_motion():
    flow = torch.zeros(2, 2, 40, 50)
    flow[:, 0], flow[:, 1] = 2.0, -1.0  # the camera pans
    flow[:, :, 10:20, 10:20] += torch.tensor([3.0, 0.0]).view(1, 2, 1, 1)  # an object moves right, relative to the world
    out = subtract_camera(flow, "median")
    assert out[:, :, 25:, 25:].abs().max() == 0  # the background is still
    assert torch.equal(out[:, :, 10:20, 10:20], torch.tensor([3.0, 0.0]).view(1, 2, 1, 1).expand(2, 2, 10, 10))
    assert subtract_camera(flow, "none") is flow
    with pytest.raises(ValueError, match="allowed: none, median"):
        subtract_camera(flow, "homography")
    # In a view the pan is measured on the whole stored frame, before the crop: a crop of the object
    # alone keeps its motion, where the crop's own median would have removed it.
    view = view_flow(flow.half(), (10, 10, 10, 10), 20, "none", camera="median")
    assert torch.allclose(view[:, 0], torch.tensor(6.0)) and torch.allclose(view[:, 1], torch.tensor(0.0))
