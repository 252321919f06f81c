"""The sample stage on the fixture: static clips score zero, the scene cut draws the selection,
golden values, determinism, and threshold changes that reuse the per-frame scores."""

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import cli
from pipeline.storage import store
from pipeline.storage.tables import read_table, table_metadata, write_table
from schemas.params import SampleParams
from schemas.tables import CLIP_INDEX, FAILURES, FLOWED
from stages import sample as sample_stage

# Selected starts per fixture video with the default params (DIS flow at short side 128): pinned, so
# any change in decoding, flow or scoring shows up here.
GOLDEN_SELECTED = {
    "cut_speed.avi": [1, 2, 3, 6, 7, 10, 11, 14, 15],
    "global_pan.avi": [2, 3, 6, 7, 10],
    "object_on_pan.mp4": [1, 2, 4, 5, 6],
    "rotate_zoom.webm": [0, 2, 3, 4, 6],
    "static_shot.mp4": [0],  # all scores 0: the one clip min_clips_per_video keeps
}


@pytest.fixture(scope="module")
def flowed(fixture_flowed):
    return fixture_flowed


def run_sample(flowed, out, params=SampleParams()):
    return sample_stage.run(params, flowed / "flow", flowed / "store.zarr", out, scheduler="sync")


def clips_by_relpath(flowed, out) -> dict[str, pd.DataFrame]:
    names = {r["video_id"]: r["relpath"] for r in read_table(flowed / "flow" / "videos.parquet", FLOWED).to_pylist()}
    clips = read_table(out / "clips.parquet", CLIP_INDEX).to_pandas()
    return {names[video_id]: group.reset_index(drop=True) for video_id, group in clips.groupby("video_id")}


def test_golden_selection_and_index_columns(flowed, tmp_path):
    summary = run_sample(flowed, tmp_path)
    clips = clips_by_relpath(flowed, tmp_path)
    assert {name: list(c.start[c.selected]) for name, c in clips.items()} == GOLDEN_SELECTED
    for c in clips.values():
        assert list(c.start) == list(range(len(c)))  # every candidate start is listed
        assert (c.clip_len == 8).all() and (c.stride == 4).all()
        assert sorted(c["rank"]) == list(range(1, len(c) + 1))
    assert len(clips["cut_speed.avi"]) == 47 - 28  # 48 frames: 47 flows, a clip spans 29
    assert clips["global_pan.avi"].score[3] == pytest.approx(0.2181, abs=5e-4)
    assert table_metadata(tmp_path / "clips.parquet")["params"] == SampleParams().model_dump(mode="json")
    assert summary.counts["candidate clips"] == sum(len(c) for c in clips.values())


def test_static_clips_score_zero_and_are_not_selected_when_others_move(flowed, tmp_path):
    run_sample(flowed, tmp_path, SampleParams(threshold="absolute", absolute=0.01, min_clips_per_video=0))
    clips = clips_by_relpath(flowed, tmp_path)
    assert (clips["static_shot.mp4"].score == 0).all() and not clips["static_shot.mp4"].selected.any()
    for name, c in clips.items():
        if name != "static_shot.mp4":
            assert c.selected.all() and (c.score > 0.02).all()


def test_selection_falls_where_the_motion_changes(flowed, tmp_path):
    """cut_speed.avi cuts to a new scene at frame 24: flow 23 spans the cut, and the flows on either
    side of it change the most. Clips that use them are the ones kept."""
    run_sample(flowed, tmp_path)
    clips = clips_by_relpath(flowed, tmp_path)["cut_speed.avi"]
    uses_cut = clips.start.map(lambda s: any(s + 4 * j in (22, 23) for j in range(8)))
    assert uses_cut[clips["rank"] == 1].all()
    assert uses_cut[clips.selected].mean() >= 0.8
    assert clips.score[uses_cut].mean() > 1.15 * clips.score[~uses_cut].mean()


def test_same_inputs_same_bytes_and_threshold_changes_reuse_frame_scores(flowed, tmp_path):
    run_sample(flowed, tmp_path / "a")
    run_sample(flowed, tmp_path / "b")
    for name in ("frames.parquet", "clips.parquet", "failures.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    flow_files = {p: p.stat().st_mtime_ns for p in (flowed / "store.zarr" / "flow").rglob("*") if p.is_file()}
    frames_before = read_table(tmp_path / "a" / "frames.parquet").to_pylist()
    for params in (SampleParams(threshold="top_k", top_k=3), SampleParams(score="flow_magnitude"), SampleParams(clip_len=4, stride=2)):
        summary = run_sample(flowed, tmp_path / "a", params)
        assert summary.counts["videos scored now"] == 0 and summary.counts["videos scored before"] == 5
    assert read_table(tmp_path / "a" / "frames.parquet").to_pylist() == frames_before
    top = read_table(tmp_path / "a" / "clips.parquet").to_pandas()
    assert (top.clip_len == 4).all()
    assert {p: p.stat().st_mtime_ns for p in (flowed / "store.zarr" / "flow").rglob("*") if p.is_file()} == flow_files
    rescored = run_sample(flowed, tmp_path / "a", SampleParams(block=14))
    assert rescored.counts["videos scored now"] == 5  # the per-frame scores themselves change


def test_short_videos_and_bad_flow_are_reported_not_dropped(flowed, tmp_path):
    import shutil

    root = tmp_path / "work"
    shutil.copytree(flowed / "store.zarr", root / "store.zarr")
    rows = read_table(flowed / "flow" / "videos.parquet", FLOWED).to_pylist()
    bad = rows[0]
    array = store.open_partial(root / "store.zarr" / "flow" / "dis" / bad["video_id"])  # corrupt it in place
    array[3, 5, 5, 0] = np.nan
    (root / "flow").mkdir()
    write_table(root / "flow" / "videos.parquet", rows, FLOWED)
    summary = sample_stage.run(SampleParams(clip_len=10), root / "flow", root / "store.zarr", root / "sample", scheduler="sync")
    failures = {f["video_id"]: f for f in read_table(root / "sample" / "failures.parquet", FAILURES).to_pylist()}
    assert failures[bad["video_id"]]["reason"] == "bad_flow" and "NaN" in failures[bad["video_id"]]["detail"]
    short = [r for r in rows if r["num_pairs"] < 9 * 4 + 1]  # a clip of 10 at stride 4 spans 37 flows
    assert short and all(failures[r["video_id"]]["reason"] == "shorter_than_clip" for r in short if r is not bad)
    assert summary.counts["videos without clips"] == len(failures)


def test_inspect_index_for_people_and_scripts(flowed, tmp_path):
    run_sample(flowed, tmp_path)
    runner = CliRunner()
    summary = runner.invoke(cli.app, ["inspect-index", "--index", str(tmp_path)])
    assert summary.exit_code == 0 and "candidate clips" in summary.output and "selected clips" in summary.output
    video_id = read_table(tmp_path / "clips.parquet").to_pylist()[0]["video_id"]
    plot = tmp_path / "curve.png"
    one = runner.invoke(cli.app, ["inspect-index", "--index", str(tmp_path), "--video", video_id, "--plot", str(plot), "--format", "csv"])
    assert one.exit_code == 0 and one.stdout.splitlines()[0] == "start,score,rank,quantile,selected"  # stdout stays clean for scripts
    assert plot.stat().st_size > 5000
    top = runner.invoke(cli.app, ["inspect-index", "--index", str(tmp_path), "--top", "2", "--format", "json"])
    records = __import__("json").loads(top.stdout)
    assert [r["end"] for r in records] == ["highest", "highest", "lowest", "lowest"] and records[0]["score"] >= records[1]["score"]
    missing = runner.invoke(cli.app, ["inspect-index", "--index", str(tmp_path), "--video", "nope"])
    assert missing.exit_code == 1 and "no clips for video 'nope'" in missing.output
    # The one-liners of docs/storage.md, "Reading the outputs".
    assert len(pd.read_parquet(tmp_path / "clips.parquet").query("selected")) == read_table(tmp_path / "clips.parquet").to_pandas().selected.sum()


def test_tables_do_not_depend_on_threads_batch_shapes_or_blocks(flowed, tmp_path, monkeypatch):
    """The last bits of a float computation depend on the thread count and the tensor shapes here,
    and on the CPU elsewhere; the rounded scores and the tables built from them do not."""
    import torch

    from pipeline.sampling.mds import frame_scores

    rows = read_table(flowed / "flow" / "videos.parquet", FLOWED).to_pylist()
    threads = torch.get_num_threads()
    try:
        for row in rows:
            flow = np.asarray(store.open_flow(str(flowed / "store.zarr"), row["method"], row["video_id"])[:], np.float32)
            variants = []
            for count in (1, 2):
                torch.set_num_threads(count)
                variants.append(frame_scores(flow))  # the whole video at once
                pairs = [frame_scores(flow[i : i + 2]) for i in range(len(flow) - 1)] + [frame_scores(flow[-1:])]
                variants.append({name: np.concatenate([p[name][:1] for p in pairs]) for name in variants[0]})  # frame by frame
            for other in variants[1:]:
                for name, values in variants[0].items():
                    assert values.tobytes() == other[name].tobytes(), (row["relpath"], name)
    finally:
        torch.set_num_threads(threads)
    run_sample(flowed, tmp_path / "whole")
    monkeypatch.setattr(sample_stage, "BLOCK_FRAMES", 5)  # the stage reads and scores 5 flows at a time
    run_sample(flowed, tmp_path / "blocks")
    for name in ("frames.parquet", "clips.parquet"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "blocks" / name).read_bytes()


def test_authors_convention_lists_every_start_and_trains_only_on_complete_clips(flowed, tmp_path):
    from pipeline.data.dataset import ClipIndex

    params = SampleParams(convention="authors", noise_floor=0.0)
    run_sample(flowed, tmp_path, params)
    clips = clips_by_relpath(flowed, tmp_path)["cut_speed.avi"]
    assert list(clips.start) == list(range(47))  # every start of 47 flows, the tail ones too
    assert list(clips.complete) == [True] * 19 + [False] * 28
    assert clips.selected.sum() > 19 / 2  # the cut-short tail drags the median down: more complete clips pass
    index = ClipIndex.load(tmp_path / "clips.parquet")
    assert all(start + 28 < 47 for start in index.starts)  # a selected tail start has no whole clip: never used
    pipeline_run = run_sample(flowed, tmp_path / "pipeline")
    assert pipeline_run.counts["videos scored now"] == 5  # another convention: the per-frame scores are recomputed
    assert clips_by_relpath(flowed, tmp_path / "pipeline")["cut_speed.avi"].complete.all()
