"""pipeline/synth.py: ground-truth motion is exact, and matches the videos made from it."""

import cv2
import numpy as np
import pytest

from conftest import FIXTURE_VIDEOS, FIXTURES
from pipeline import synth
from pipeline.decode import DecodeSpec, iter_frame_blocks


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
