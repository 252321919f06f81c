"""pipeline/data/synth.py: ground-truth motion is exact, and matches the videos made from it."""

import hashlib

import cv2
import numpy as np
import pytest

from conftest import FIXTURE_VIDEOS, FIXTURES
from pipeline.data import synth
from pipeline.io.decode import DecodeSpec, iter_frame_blocks


def backward_warp(frame: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample frame t+1 at x + flow(x): equals frame t where the flow is right."""
    height, width = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return cv2.remap(frame.astype(np.float32), xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR)


def test_translation_truth_is_the_velocity_everywhere():
    truth = synth.global_motion_scene(0, width=40, height=30, frames=3, fps=(25, 1), velocity=(1.5, -0.5))
    flow, valid = synth.truth_flow(truth, 0)
    np.testing.assert_allclose(flow[valid], np.tile([1.5, -0.5], (valid.sum(), 1)), atol=1e-6)
    assert valid[1:, :-2].all()
    assert not valid[:, -1].any() and not valid[0].any()  # moved out of the frame (right, top)


def test_rotation_is_counter_clockwise_on_screen():
    truth = synth.global_motion_scene(0, width=41, height=41, frames=2, fps=(25, 1), rotation_deg=10)
    flow, _ = synth.truth_flow(truth, 0)
    # A point right of the centre moves up (negative y) when rotating counter-clockwise.
    assert flow[20, 40, 1] < -3 and abs(flow[20, 20]).max() < 1e-6


def test_zoom_scales_flow_with_resolution():
    truth = synth.global_motion_scene(0, width=40, height=30, frames=2, fps=(25, 1), zoom=1.05)
    full, _ = synth.truth_flow(truth, 0)
    half, _ = synth.truth_flow(truth, 0, scale=0.5)
    assert half.shape == (15, 20, 2)
    np.testing.assert_allclose(half[::1, ::1], 0.5 * cv2.resize(full, (20, 15), interpolation=cv2.INTER_AREA), atol=0.05)


def test_truth_json_round_trips():
    truth = synth.demo_scene("rotate", 5, width=64, height=48, frames=4, fps=25, camera_motion=True)
    again = synth.SceneTruth.from_json(truth.to_json())
    assert again == truth
    with pytest.raises(ValueError, match="regenerate"):
        synth.SceneTruth.from_json(truth.to_json().replace('"version": 1', '"version": 99'))


@pytest.mark.parametrize("label", ["slide_horizontal", "slide_vertical", "rotate", "zoom_in", "zoom_out", "oscillate"])
def test_rendered_demo_frames_agree_with_their_truth(label):
    truth = synth.demo_scene(label, 7, width=96, height=72, frames=6, fps=25, camera_motion=True)
    frames = list(synth.render_frames(truth))
    flow, valid = synth.truth_flow(truth, 2)
    warped = backward_warp(frames[3], flow)
    error = np.abs(warped - frames[2])[valid].mean()
    still = np.abs(frames[3].astype(np.float32) - frames[2])[valid].mean()
    assert valid.mean() > 0.7
    assert error < 2.0 and error < still / 5


@pytest.mark.parametrize("name", FIXTURE_VIDEOS)
def test_fixture_videos_agree_with_their_truth(name):
    """The committed ground truth describes the committed, lossy-encoded video."""
    truth = synth.SceneTruth.load(FIXTURES / f"{name}.truth.json")
    size = (truth.width, truth.height)
    frames = np.concatenate(list(iter_frame_blocks(FIXTURES / name, DecodeSpec(*size), source_width=size[0], source_height=size[1])))
    assert len(frames) == truth.num_frames
    for t in range(0, truth.num_frames - 1, 7):
        flow, valid = synth.truth_flow(truth, t)
        if t + 1 in truth.cuts:
            assert not valid.any()
            continue
        error = np.abs(backward_warp(frames[t + 1], flow) - frames[t])[valid].mean()
        assert error < 8.0, (name, t, error)  # codec noise only; a wrong flow gives tens of levels


def test_scene_cut_truth():
    truth = synth.SceneTruth.load(FIXTURES / "cut_speed.avi.truth.json")
    assert truth.cuts == [24]
    _, valid = synth.truth_flow(truth, 23)
    assert not valid.any()
    slow, _ = synth.truth_flow(truth, 30)
    fast, _ = synth.truth_flow(truth, 40)
    np.testing.assert_allclose(fast[60, 80], 2 * slow[60, 80], atol=1e-6)  # the speed change


def test_the_default_demo_scene_is_unchanged_by_the_variant_knobs():
    """Held-out variants added knobs; the default demo must render the very same pixels as before."""
    truth = synth.demo_scene("oscillate", 3, width=64, height=48, frames=4, fps=25, camera_motion=True)
    digest = hashlib.sha256(np.stack(list(synth.render_frames(truth))).tobytes()).hexdigest()
    assert digest == "7df5f02e38321b3c27c23b54fe4b4ff0898d712089a88e400666edc0ed22e20c"


def _track(label: str, seed: int = 11, style: synth.DemoStyle = synth.DemoStyle(), frames: int = 40) -> np.ndarray:
    """(frames, 4): cx, cy, angle, scale of the first object, without camera motion."""
    truth = synth.demo_scene(label, seed, width=96, height=72, frames=frames, fps=25, camera_motion=False, style=style)
    return np.array(truth.segments[0].layers[1].params)


@pytest.mark.parametrize(
    ("label", "check"),
    [
        ("slide_left", lambda p: np.all(np.diff(p[:, 0]) < 0) and np.ptp(p[:, 1]) == 0),
        ("slide_right", lambda p: np.all(np.diff(p[:, 0]) > 0) and np.ptp(p[:, 1]) == 0),
        ("slide_up", lambda p: np.all(np.diff(p[:, 1]) < 0) and np.ptp(p[:, 0]) == 0),
        ("slide_down", lambda p: np.all(np.diff(p[:, 1]) > 0) and np.ptp(p[:, 0]) == 0),
        ("rotate_ccw", lambda p: np.all(np.diff(p[:, 2]) > 0)),  # angle grows counter-clockwise on screen
        ("rotate_cw", lambda p: np.all(np.diff(p[:, 2]) < 0)),
        ("slide_diagonal", lambda p: np.allclose(np.abs(np.diff(p[:, 0])), np.abs(np.diff(p[:, 1]))) and np.ptp(p[:, 0]) > 20),
        ("orbit", lambda p: np.ptp(np.hypot(*(p[:, :2] - (p[:, :2].max(0) + p[:, :2].min(0)) / 2).T)) < 0.5 and np.ptp(p[:, 0]) > 10),
        ("bounce", lambda p: np.ptp(p[:, 0]) == 0 and np.ptp(p[:, 1]) > 8 and (np.diff(np.sign(np.diff(p[:, 1]))) != 0).any()),
        ("pulse", lambda p: np.ptp(p[:, 3]) > 0.2 and np.ptp(p[:, :3], axis=0).max() == 0),
        ("swing", lambda p: np.ptp(p[:, 2]) > 0.5 and (np.diff(np.sign(np.diff(p[:, 2]))) != 0).any()),
        ("still", lambda p: np.ptp(p, axis=0).max() == 0),
    ],
)
def test_each_motion_class_moves_as_its_name_says(label, check):
    for seed in range(4):
        assert check(_track(label, seed)), (label, seed)


def test_speed_scales_every_motion_and_objects_multiply():
    slow, fast = _track("slide_horizontal"), _track("slide_horizontal", style=synth.DemoStyle(speed=2.0))
    np.testing.assert_allclose(np.diff(fast[:, 0]), 2 * np.diff(slow[:, 0]))
    swing, wide = _track("swing"), _track("swing", style=synth.DemoStyle(speed=2.0))
    np.testing.assert_allclose(wide[:, 2] - wide[0, 2], 2 * (swing[:, 2] - swing[0, 2]), atol=1e-12)
    style = synth.DemoStyle(objects=3, object_size=(0.1, 0.12), texture="gratings", camera_speed=(2.0, 2.0))
    truth = synth.demo_scene("rotate", 5, width=96, height=72, frames=4, fps=25, camera_motion=True, style=style)
    layers = truth.segments[0].layers
    assert len(layers) == 4 and {layer.texture for layer in layers} == {"gratings"}
    assert [round(layer.params[0][0] / 96, 1) for layer in layers[1:]] == pytest.approx([0.2, 0.5, 0.8], abs=0.1)  # side by side
    assert all(0.1 * 72 <= layer.ellipse[0] <= 0.12 * 72 for layer in layers[1:])
    pan = np.subtract(layers[0].params[1][:2], layers[0].params[0][:2])
    assert np.hypot(*pan) == pytest.approx(2.0)
    assert synth.SceneTruth.from_json(truth.to_json()) == truth
    frames = list(synth.render_frames(truth))
    flow, valid = synth.truth_flow(truth, 1)
    error = np.abs(backward_warp(frames[2], flow) - frames[1])[valid].mean()
    still = np.abs(frames[2].astype(np.float32) - frames[1])[valid].mean()
    assert error < still / 5  # the truth describes the gratings video too


def test_texture_families_differ_and_unknown_ones_are_refused():
    blobs, gratings = synth.make_texture(3, (40, 50)), synth.make_texture(3, (40, 50), "gratings")
    assert blobs.shape == gratings.shape == (40, 50, 3) and not np.allclose(blobs, gratings)
    np.testing.assert_array_equal(gratings, synth.make_texture(3, (40, 50), "gratings"))
    with pytest.raises(ValueError, match="allowed: blobs, gratings"):
        synth.make_texture(3, (40, 50), "marble")
    with pytest.raises(ValueError, match="unknown motion class 'wobble'"):
        synth.demo_scene("wobble", 1, width=32, height=24, frames=2, fps=25, camera_motion=False)
