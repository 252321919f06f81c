"""pipeline/flow/estimators.py: every backend against the fixture's ground truth, and the estimator contract."""

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from pipeline.data import synth
from pipeline.flow.estimators import DIS, RAFT, TVL1, Farneback, FlowError, RAFTConfig, RaftWeightsMissing, TVL1Config
from pipeline.io.decode import DecodeSpec, iter_frame_blocks
from pipeline.storage import store
from pipeline.storage.tables import read_table
from schemas.params import FlowParams
from stages import flow as flow_stage

GLOBAL = ["global_pan.avi", "rotate_zoom.webm", "object_on_pan.mp4", "cut_speed.avi"]


def fixture_frames(name: str, count: int) -> tuple[synth.SceneTruth, np.ndarray]:
    truth = synth.SceneTruth.load(FIXTURES / f"{name}.truth.json")
    size = (truth.width, truth.height)
    frames = np.concatenate(list(iter_frame_blocks(FIXTURES / name, DecodeSpec(*size), source_width=size[0], source_height=size[1])))
    return truth, frames[:count]


def epe(truth: synth.SceneTruth, flow: np.ndarray, border: int = 8) -> float:
    """Mean end-point error over valid pixels, away from the borders, over all pairs."""
    errors = []
    for t in range(len(flow)):
        gt, valid = synth.truth_flow(truth, t)
        inner = np.zeros_like(valid)
        inner[border:-border, border:-border] = True
        if (valid & inner).any():
            errors.append(np.linalg.norm(flow[t] - gt, axis=-1)[valid & inner])
    return float(np.concatenate(errors).mean())


@pytest.fixture(scope="module")
def clips():
    return {name: fixture_frames(name, 6) for name in GLOBAL}


@pytest.mark.parametrize(
    "estimator, bound",
    [(TVL1(), 0.15), (TVL1(TVL1Config(nscales=3, warps=3, warm_start=True)), 0.15), (DIS(), 0.2), (Farneback(), 0.5)],
    ids=["tvl1", "tvl1_fast", "dis", "farneback"],
)
def test_backends_recover_the_known_motion(clips, estimator, bound):
    for name, (truth, frames) in clips.items():
        flow = estimator.estimate(frames)
        assert flow.shape == (len(frames) - 1, *frames.shape[1:3], 2) and flow.dtype == np.float32
        error = epe(truth, flow)
        assert error < bound, (name, error)


def test_static_shot_gives_zero_flow():
    _, frames = fixture_frames("static_shot.mp4", 4)
    for estimator in (TVL1(), DIS()):
        magnitude = np.linalg.norm(estimator.estimate(frames), axis=-1)
        assert magnitude.mean() < 0.05 and np.percentile(magnitude, 99) < 0.3  # codec noise only


def test_fast_preset_is_as_accurate_as_the_defaults_on_large_motion():
    """Warm starting is what lets fewer scales and warps keep up with 5-7 px/frame motion."""
    cases = [synth.global_motion_scene(100 + k, width=170, height=128, frames=8, fps=(25, 1), **kw)
             for k, kw in enumerate([dict(velocity=(5.0, 3.0)), dict(velocity=(-7.0, 1.0)), dict(rotation_deg=3.0, zoom=1.03)])]  # fmt: skip
    default, fast = TVL1(), TVL1(TVL1Config(nscales=3, warps=3, warm_start=True))
    cold = TVL1(TVL1Config(nscales=2, warps=2))
    errors = {"default": [], "fast": [], "cold": []}
    for index, truth in enumerate(cases):
        frames = np.stack(list(synth.render_frames(truth)))
        for key, estimator in (("default", default), ("fast", fast), ("cold", cold)):
            if key != "cold" or index == 0:  # one case shows it, and a failing TV-L1 is slow
                errors[key].append(epe(truth, estimator.estimate(frames)))
    # "Same accuracy": within 0.02 px of the defaults' mean end-point error, both far below a pixel.
    assert np.mean(errors["default"]) < 0.1 and np.mean(errors["fast"]) < np.mean(errors["default"]) + 0.02
    assert errors["cold"][0] > 3 * errors["fast"][0]  # without warm start, fewer scales fail


def test_warm_start_uses_the_initial_flow():
    truth = synth.global_motion_scene(7, width=96, height=72, frames=3, fps=(25, 1), velocity=(6.0, 0.0))
    frames = np.stack(list(synth.render_frames(truth)))
    one_scale = TVL1(TVL1Config(nscales=1, warps=2, warm_start=True))
    blind = one_scale.estimate(frames[1:])
    guided = one_scale.estimate(frames[1:], initial=np.full((72, 96, 2), (6.0, 0.0), np.float32))
    assert epe(truth, guided) < 0.5 * epe(truth, blind)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((1, 8, 8, 3), np.uint8), "at least 2 frames"),
    (np.zeros((3, 8, 8), np.uint8), r"\(T, H, W, 3\) uint8"),
    (np.zeros((3, 8, 8, 3), np.float32), r"\(T, H, W, 3\) uint8"),
    ([np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)], r"\(T, H, W, 3\) uint8"),  # frames of different sizes
])  # fmt: skip
def test_bad_frames_are_a_clear_error(bad, message):
    for estimator in (TVL1(), DIS(), Farneback()):
        with pytest.raises(FlowError, match=message):
            estimator.estimate(bad)


@pytest.fixture(scope="module")
def random_raft_weights(tmp_path_factory):
    """A local checkpoint with random weights: exercises the real loading path without a download."""
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("raft") / "raft_small_random.pth"
    torch.save(raft_small(weights=None).state_dict(), path)
    return path


def test_raft_pads_batches_and_crops_back(random_raft_weights):
    _, frames = fixture_frames("rotate_zoom.webm", 5)  # 161x121: not a multiple of 8
    batched = RAFT(RAFTConfig(weights=str(random_raft_weights), iterations=2, batch_size=3, device="cpu"))
    single = RAFT(RAFTConfig(weights=str(random_raft_weights), iterations=2, batch_size=1, device="cpu"))
    flow = batched.estimate(frames)
    assert flow.shape == (4, 121, 161, 2) and np.isfinite(flow).all()
    np.testing.assert_allclose(flow, single.estimate(frames), atol=1e-4)
    assert batched.describe()["method"] == "raft_small"


def test_raft_halves_its_batch_when_the_device_runs_out_of_memory(random_raft_weights, caplog):
    """A batch too large for the device is not a failure: the batch is halved until it fits and the
    flow is the flow of any batch size; the batch it settled on is kept and named in a warning."""
    import torch

    _, frames = fixture_frames("rotate_zoom.webm", 6)
    raft = RAFT(RAFTConfig(weights=str(random_raft_weights), iterations=2, batch_size=4, device="cpu"))
    model, sizes = raft.model, []

    def small_device(first, second, **kwargs):
        sizes.append(len(first))
        if len(first) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return model(first, second, **kwargs)

    raft.model = small_device
    with caplog.at_level("WARNING"):
        flow = raft.estimate(frames)
    assert sizes == [4, 2, 2, 1] and raft.batch_size == 2
    assert "out of device memory at 4 frame pairs a batch; going on at 2 (flow.raft_small.batch_size)" in caplog.text
    single = RAFT(RAFTConfig(weights=str(random_raft_weights), iterations=2, batch_size=1, device="cpu"))
    np.testing.assert_allclose(flow, single.estimate(frames), atol=1e-4)


def test_raft_without_weights_says_how_to_supply_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(RaftWeightsMissing, match=r"never downloaded.*raft_small_C_T_V2-01064c6d\.pth"):
        RAFT(RAFTConfig())
    with pytest.raises(RaftWeightsMissing, match=r"never downloaded.*\(flow\.raft_small\.weights in params\.yaml\)"):
        flow_stage.make_estimator(FlowParams(method="raft_small"))  # the stage names the setting
    with pytest.raises(RaftWeightsMissing, match="does not exist"):
        RAFT(RAFTConfig(weights=str(tmp_path / "nope.pth")))


def _real_raft_weights():
    import os
    from pathlib import Path

    path = os.environ.get("MSCL_RAFT_SMALL_WEIGHTS") or str(Path(torch.hub.get_dir()) / "checkpoints" / "raft_small_C_T_V2-01064c6d.pth")
    return path if Path(path).is_file() else None


@pytest.mark.skipif(_real_raft_weights() is None, reason="no pretrained RAFT weights on this machine (none are downloaded)")
def test_raft_with_pretrained_weights_recovers_the_known_motion(clips):
    raft = RAFT(RAFTConfig(weights=_real_raft_weights(), iterations=12, device="cpu"))
    for name, (truth, frames) in clips.items():
        assert epe(truth, raft.estimate(frames)) < 0.5, name


def test_raft_on_a_gpu_runs_in_one_process_fed_by_threads_with_the_same_flow(fixture_flowed, random_raft_weights, tmp_path, monkeypatch):
    """With RAFT on CUDA the stage runs every estimate in its own process (one CUDA context, full
    batches) while threads read the next tasks' frames: the same arrays and stats as the workers'
    way. Here on the CPU, the choice forced."""
    import shutil

    params = FlowParams(method="raft_small", pairs_per_task=8, shard_frames=8,
                        raft_small={"weights": str(random_raft_weights), "iterations": 1, "batch_size": 4, "device": "cpu"})  # fmt: skip
    made = []
    for name, owns in (("workers", False), ("one_process", True)):
        root = tmp_path / name
        shutil.copytree(fixture_flowed / "store.zarr" / "frames", root / "store.zarr" / "frames")
        monkeypatch.setattr(flow_stage, "_owns_the_device", lambda estimator, scheduler, owns=owns: owns)
        calls = []
        monkeypatch.setattr(flow_stage, "_windows", lambda task, calls=calls: calls.append(task) or list(flow_stage.task_windows(task)))
        summary = flow_stage.run(params, fixture_flowed / "decode", root / "store.zarr", root / "flow", scheduler="sync")
        assert summary.counts["computed"] == 5 and bool(calls) == owns
        made.append(root)
    videos = read_table(made[0] / "flow" / "videos.parquet").to_pylist()
    assert videos == read_table(made[1] / "flow" / "videos.parquet").to_pylist()
    for row in videos:
        a, b = (store.open_flow(root / "store.zarr", "raft_small", row["video_id"])[:] for root in made)
        assert np.array_equal(a, b), row["video_id"]
