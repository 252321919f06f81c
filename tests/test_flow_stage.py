"""The flow stage end to end: stored flow equals the estimator's, tasks split long videos, re-runs skip,
bad videos are quarantined, and the CLI draws flow for people."""

import numpy as np
import pytest
from typer.testing import CliRunner

import cli
from pipeline.storage import store
from pipeline.storage.tables import read_table, write_table
from schemas.params import DecodeParams, FlowParams, ProbeParams
from schemas.tables import DECODED, FAILURES, FLOW_STATS, FLOWED
from stages import decode as decode_stage
from stages import flow as flow_stage
from stages import probe as probe_stage


@pytest.fixture(scope="module")
def decoded(fixture_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("decoded")
    probe_stage.run(ProbeParams(), fixture_dir, root / "manifest", scheduler="sync")
    decode_stage.run(DecodeParams(short_side=64), root / "manifest", fixture_dir, root / "store.zarr", root / "decode", scheduler="sync")
    return root


def run_flow(decoded, out, params):
    return flow_stage.run(params, decoded / "decode", decoded / "store.zarr", out, scheduler="sync")


def test_stored_flow_is_the_estimators_output_in_float16(decoded, tmp_path):
    params = FlowParams(method="dis")
    summary = run_flow(decoded, tmp_path, params)
    assert summary.counts["computed"] == 5
    estimator = flow_stage.make_estimator(params)
    rows = read_table(tmp_path / "videos.parquet", FLOWED).to_pylist()
    stats = read_table(tmp_path / "stats.parquet", FLOW_STATS).to_pandas()
    for row in rows:
        frames = store.open_frames(decoded / "store.zarr", row["video_id"])
        flow = store.open_flow(decoded / "store.zarr", "dis", row["video_id"])
        assert flow.shape == (frames.shape[0] - 1, *frames.shape[1:3], 2) and flow.dtype == np.float16
        expected = estimator.estimate(frames[:])
        np.testing.assert_array_equal(flow[:], expected.astype(np.float16))
        assert flow.attrs["method"] == "dis" and flow.attrs["estimator"]["params"]["preset"] == "medium"
        video_stats = stats[stats.video_id == row["video_id"]]
        assert list(video_stats.frame) == list(range(flow.shape[0]))
        magnitude = np.linalg.norm(expected, axis=-1)
        np.testing.assert_allclose(video_stats.mean_mag, magnitude.mean(axis=(1, 2)), rtol=1e-5)
        np.testing.assert_allclose(video_stats.mean_u, expected[..., 0].mean(axis=(1, 2)), rtol=1e-4, atol=1e-6)
    static = [r for r in rows if r["video_id"].startswith("static_shot")][0]
    assert stats[stats.video_id == static["video_id"]].moving_frac.max() < 0.05
    pan = [r for r in rows if r["video_id"].startswith("global_pan")][0]
    pan_stats = stats[stats.video_id == pan["video_id"]]
    # 1.5 px/frame right and 0.75 up at 160x120, stored at 64 px high: scaled by 64/120.
    assert pan_stats.mean_u.median() == pytest.approx(1.5 * 64 / 120, abs=0.1)
    assert pan_stats.mean_v.median() == pytest.approx(-0.75 * 64 / 120, abs=0.1)


def test_long_videos_split_into_tasks_give_the_same_flow(decoded, tmp_path):
    whole = FlowParams(method="dis")
    split = FlowParams(method="dis", pairs_per_task=8, shard_frames=8, chunk_frames=4)
    run_flow(decoded, tmp_path / "whole", whole)
    other_store = tmp_path / "split"
    summary = flow_stage.run(split, decoded / "decode", decoded / "store.zarr", other_store, scheduler="sync")
    assert summary.counts["computed"] == 5
    whole_stats = read_table(tmp_path / "whole" / "stats.parquet").to_pylist()
    assert read_table(other_store / "stats.parquet").to_pylist() == whole_stats
    flow = store.open_flow(decoded / "store.zarr", "dis", read_table(other_store / "videos.parquet").to_pylist()[0]["video_id"])
    assert flow.shards[0] == 8


def test_rerun_skips_and_method_change_recomputes(decoded, tmp_path):
    params = FlowParams(method="farneback")
    run_flow(decoded, tmp_path, params)
    first = read_table(tmp_path / "stats.parquet").to_pylist()
    again = run_flow(decoded, tmp_path, params)
    assert again.counts["skipped"] == 5 and "computed" not in again.counts
    assert read_table(tmp_path / "stats.parquet").to_pylist() == first
    changed = run_flow(decoded, tmp_path, FlowParams(method="farneback", farneback={"winsize": 9}))
    assert changed.counts["computed"] == 5
    unrelated = run_flow(decoded, tmp_path, FlowParams(method="farneback", farneback={"winsize": 9}, dis={"preset": "fast"}))
    assert unrelated.counts["skipped"] == 5  # another method's params do not invalidate this flow
    threshold = run_flow(decoded, tmp_path, FlowParams(method="farneback", farneback={"winsize": 9}, moving_threshold=2.0))
    assert threshold.counts["computed"] == 5  # the stats depend on it


def test_bad_videos_are_quarantined_and_the_rest_finish(decoded, tmp_path):
    """A one-frame video, a flat-colour video and a frames array that does not match its table."""
    import shutil

    root = tmp_path / "work"
    shutil.copytree(decoded / "store.zarr", root / "store.zarr")
    rows = read_table(decoded / "decode" / "decoded.parquet", DECODED).to_pylist()
    base = rows[0]
    store.write_frames(root / "store.zarr", "one_frame", [np.zeros((1, 64, 85, 3), np.uint8) + 50], height=64, width=85,
                       chunk_frames=8, shard_frames=256, attrs={"fingerprint": "x"})  # fmt: skip
    store.write_frames(root / "store.zarr", "flat", [np.full((6, 64, 85, 3), 90, np.uint8)], height=64, width=85,
                       chunk_frames=8, shard_frames=256, attrs={"fingerprint": "y"})  # fmt: skip
    extra = [
        {**base, "video_id": "one_frame", "relpath": "one_frame.mp4", "num_frames": 1, "height": 64, "width": 85},
        {**base, "video_id": "flat", "relpath": "flat.mp4", "num_frames": 6, "height": 64, "width": 85},
        {**rows[1], "video_id": rows[1]["video_id"], "height": rows[1]["height"] + 2},  # table and array disagree
    ]
    (root / "decode").mkdir()
    write_table(root / "decode" / "decoded.parquet", [rows[0], *rows[2:], *extra], DECODED)
    summary = flow_stage.run(FlowParams(method="dis"), root / "decode", root / "store.zarr", root / "flow", scheduler="sync")
    failures = {f["video_id"]: f for f in read_table(root / "flow" / "failures.parquet", FAILURES).to_pylist()}
    assert failures["one_frame"]["reason"] == "too_few_frames"
    assert failures["flat"]["reason"] == "uniform_frames" and "flat colour" in failures["flat"]["detail"]
    assert failures[rows[1]["video_id"]]["reason"] == "bad_frames" and "re-run the decode stage" in failures[rows[1]["video_id"]]["detail"]
    assert summary.counts["computed"] == 4
    assert sorted(store.finished_arrays(root / "store.zarr", "flow/dis")) == sorted([rows[0]["video_id"], *(r["video_id"] for r in rows[2:])])


def test_extract_flow_help_explains_every_option():
    result = CliRunner().invoke(cli.app, ["extract-flow", "--help"])
    assert result.exit_code == 0
    for option in ("--params", "--method", "--decoded", "--store", "--out", "--scheduler", "--workers", "tvl1_fast", "raft_small"):
        assert option in result.output


def test_show_flow_draws_a_strip_and_a_video(decoded, tmp_path):
    run_flow(decoded, tmp_path / "flow", FlowParams(method="dis"))
    video_id = read_table(tmp_path / "flow" / "videos.parquet").to_pylist()[1]["video_id"]
    runner = CliRunner()
    png, mp4 = tmp_path / "strip.png", tmp_path / "flow.mp4"
    for out in (png, mp4):
        result = runner.invoke(cli.app, ["show-flow", video_id, "--method", "dis", "--store", str(decoded / "store.zarr"), "--out", str(out)])
        assert result.exit_code == 0, result.output
    import cv2

    image = cv2.imread(str(png))
    frames = store.open_frames(decoded / "store.zarr", video_id)
    assert image.shape == (2 * frames.shape[1], 6 * frames.shape[2], 3)
    assert mp4.stat().st_size > 1000
    missing = runner.invoke(cli.app, ["show-flow", "nope", "--method", "dis", "--store", str(decoded / "store.zarr")])
    assert missing.exit_code == 1 and "run the" in missing.output


def test_an_aborted_run_leaves_no_partial_array_and_resumes(decoded, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(decoded / "store.zarr" / "frames", tmp_path / "store.zarr" / "frames")
    real_task, calls = flow_stage.flow_task, {"n": 0}

    def dies_on_the_third_task(task):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if the run were stopped here
        return real_task(task)

    monkeypatch.setattr(flow_stage, "flow_task", dies_on_the_third_task)
    with pytest.raises(KeyboardInterrupt):
        flow_stage.run(FlowParams(method="dis"), decoded / "decode", tmp_path / "store.zarr", tmp_path / "flow", scheduler="sync")
    assert len(store.finished_arrays(tmp_path / "store.zarr", "flow/dis")) == 2  # the two finished before the stop
    assert not (tmp_path / "flow" / "videos.parquet").exists()
    monkeypatch.setattr(flow_stage, "flow_task", real_task)
    summary = flow_stage.run(FlowParams(method="dis"), decoded / "decode", tmp_path / "store.zarr", tmp_path / "flow", scheduler="sync")
    assert (summary.counts["skipped"], summary.counts["computed"]) == (2, 3)  # only the missing work
    assert not any((tmp_path / "store.zarr.partial" / "flow" / "dis").iterdir())
    resumed_stats = read_table(tmp_path / "flow" / "stats.parquet").to_pylist()
    again = flow_stage.run(FlowParams(method="dis"), decoded / "decode", tmp_path / "store.zarr", tmp_path / "flow", scheduler="sync")
    assert again.counts["skipped"] == 5
    assert read_table(tmp_path / "flow" / "stats.parquet").to_pylist() == resumed_stats
    fresh = tmp_path / "fresh"
    shutil.copytree(decoded / "store.zarr" / "frames", fresh / "store.zarr" / "frames")
    flow_stage.run(FlowParams(method="dis"), decoded / "decode", fresh / "store.zarr", fresh / "flow", scheduler="sync")
    assert read_table(fresh / "flow" / "stats.parquet").to_pylist() == resumed_stats  # as if never stopped


@pytest.mark.parametrize("method", ["dis", "tvl1"])
def test_a_videos_flow_does_not_depend_on_what_its_worker_did_before(method):
    """Before: each worker kept one OpenCV estimator, and DIS and TV-L1 carry state across a change of
    frame size, so the same frames gave flow 0.14 px apart once a video of another size had been through."""
    rng = np.random.default_rng(0)

    def frames(height, width):
        base = (rng.random((height + 4, width + 4, 3)) * 255).astype(np.uint8)
        return np.stack([base[i : i + height, i : i + width] for i in range(3)])

    video, other = frames(48, 64), frames(24, 32)
    params = FlowParams(method=method)
    first = flow_stage._estimator(params).estimate(video)
    flow_stage._estimator(params).estimate(other)
    assert np.array_equal(flow_stage._estimator(params).estimate(video), first)
