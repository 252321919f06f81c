"""The decode stage end to end on the fixture: contents, atomic resume after a kill, determinism,
re-runs that do only the missing work, and bad videos that cost nothing but themselves."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, store_bytes, tree_bytes
from pipeline.io.decode import DecodeSpec, iter_frame_blocks
from pipeline.storage import store
from pipeline.storage.tables import read_table
from schemas.params import DecodeParams, ProbeParams
from schemas.tables import DECODED, FAILURES, VIDEOS
from stages import decode as decode_stage
from stages import probe as probe_stage


@pytest.fixture(scope="module")
def manifest(fixture_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("manifest")
    probe_stage.run(ProbeParams(), fixture_dir, out, scheduler="sync")
    return out


def run_decode(manifest, videos, tmp: Path, params=DecodeParams(), **kw):
    return decode_stage.run(params, manifest, videos, tmp / "store.zarr", tmp / "decode", scheduler="sync", **kw)


def test_decode_stage_writes_one_array_per_video(manifest, fixture_dir, tmp_path):
    summary = run_decode(manifest, fixture_dir, tmp_path)
    videos = {row["video_id"]: row for row in read_table(manifest / "videos.parquet", VIDEOS).to_pylist()}
    decoded = read_table(tmp_path / "decode" / "decoded.parquet", DECODED).to_pylist()
    assert summary.counts["decoded"] == 5 and read_table(tmp_path / "decode" / "failures.parquet", FAILURES).num_rows == 0
    assert sorted(row["video_id"] for row in decoded) == sorted(videos)
    for row in decoded:
        source = videos[row["video_id"]]
        array = store.open_frames(tmp_path / "store.zarr", row["video_id"])
        assert array.shape == (source["num_frames"], row["height"], row["width"], 3) == (row["num_frames"], *array.shape[1:])
        assert min(row["height"], row["width"]) == 128
        assert row["width"] / row["height"] == pytest.approx(source["width"] / source["height"], rel=0.01)
        assert (row["fps_num"], row["fps_den"]) == (source["fps_num"], source["fps_den"])
        attrs = dict(array.attrs)
        assert attrs["sha256"] == source["sha256"] and attrs["relpath"] == source["relpath"]
        assert attrs["params"]["short_side"] == 128 and attrs["num_frames"] == row["num_frames"]
        assert set(attrs) == set(__import__("schemas.store", fromlist=["x"]).FRAMES_ATTRS)
        # The stored pixels are exactly what the decoder produced.
        expected = np.concatenate(list(iter_frame_blocks(
            fixture_dir / source["relpath"], DecodeSpec(row["width"], row["height"]),
            source_width=source["display_width"], source_height=source["display_height"],
        )))  # fmt: skip
        np.testing.assert_array_equal(array[:], expected)


def test_same_inputs_and_params_give_identical_bytes(manifest, fixture_dir, tmp_path):
    run_decode(manifest, fixture_dir, tmp_path / "a")
    run_decode(manifest, fixture_dir, tmp_path / "b")
    a, b = store_bytes(tmp_path / "a" / "store.zarr"), store_bytes(tmp_path / "b" / "store.zarr")
    assert len(a) == 2 * 5 + 2 and a == b  # zarr.json + one shard per video, and the groups' zarr.json
    for table in ("decoded.parquet", "failures.parquet"):  # equal rows (their metadata names the store path)
        assert read_table(tmp_path / "a" / "decode" / table).to_pylist() == read_table(tmp_path / "b" / "decode" / table).to_pylist()


def test_rerun_skips_unchanged_and_redoes_changed_params(manifest, fixture_dir, tmp_path):
    run_decode(manifest, fixture_dir, tmp_path)
    frames = tmp_path / "store.zarr" / "frames"
    mtimes = {p: p.stat().st_mtime_ns for p in frames.rglob("*") if p.is_file()}
    again = run_decode(manifest, fixture_dir, tmp_path)
    assert again.counts == {"skipped": 5, "frames stored": 204}
    assert {p: p.stat().st_mtime_ns for p in frames.rglob("*") if p.is_file()} == mtimes  # nothing rewritten
    smaller = run_decode(manifest, fixture_dir, tmp_path, params=DecodeParams(short_side=64))
    assert smaller.counts["decoded"] == 5
    assert {min(r["height"], r["width"]) for r in read_table(tmp_path / "decode" / "decoded.parquet").to_pylist()} == {64}


def test_arrays_of_videos_gone_from_the_manifest_are_removed(manifest, fixture_dir, tmp_path):
    run_decode(manifest, fixture_dir, tmp_path)
    table = read_table(manifest / "videos.parquet", VIDEOS)
    smaller = tmp_path / "manifest"
    smaller.mkdir()
    from pipeline.storage.tables import write_table

    write_table(smaller / "videos.parquet", table.to_pylist()[:3], VIDEOS)
    summary = run_decode(smaller, fixture_dir, tmp_path)
    assert summary.counts["stale arrays removed"] == 2
    assert len(store.finished_arrays(tmp_path / "store.zarr", "frames")) == 3


def test_a_video_that_fails_to_decode_costs_only_itself(bad_videos, tmp_path):
    videos = tmp_path / "videos"
    shutil.copytree(bad_videos, videos, symlinks=True)
    probe_stage.run(ProbeParams(), videos, tmp_path / "manifest", scheduler="sync")
    (videos / "UPPER.MP4").write_bytes(b"gone bad after probing")  # fails at decode time
    summary = run_decode(tmp_path / "manifest", videos, tmp_path)
    failures = read_table(tmp_path / "decode" / "failures.parquet", FAILURES).to_pylist()
    assert [(f["relpath"], f["stage"], f["reason"]) for f in failures] == [("UPPER.MP4", "decode", "decode_error")]
    assert "UPPER.MP4" in failures[0]["detail"] and str(tmp_path) not in failures[0]["detail"]
    usable = read_table(tmp_path / "manifest" / "videos.parquet", VIDEOS).num_rows
    assert summary.counts["decoded"] == usable - 1
    decoded = {row["relpath"]: row for row in read_table(tmp_path / "decode" / "decoded.parquet").to_pylist()}
    assert decoded["corrupt_middle.mp4"]["num_frames"] > 0  # degraded videos keep the frames that decode
    assert (decoded["rotated_90.mp4"]["height"], decoded["rotated_90.mp4"]["width"]) == (171, 128)
    assert (decoded["anamorphic_sar_2_1.mp4"]["height"], decoded["anamorphic_sar_2_1.mp4"]["width"]) == (128, 341)


def test_killed_run_resumes_without_partial_arrays(fixture_dir, tmp_path):
    # Enough work that the run is surely still going when the first array appears.
    videos = tmp_path / "videos"
    videos.mkdir()
    for k in range(40):
        shutil.copy(fixture_dir / "object_on_pan.mp4", videos / f"copy_{k:02d}.mp4")
    probe_stage.run(ProbeParams(), videos, tmp_path / "manifest", scheduler="sync")
    params = tmp_path / "params.yaml"
    params.write_text("decode:\n  short_side: 256\n")
    command = [sys.executable, str(REPO / "cli.py"), "decode", "--params", str(params), "--scheduler", "sync",
               "--manifest", str(tmp_path / "manifest"), "--videos", str(videos),
               "--store", str(tmp_path / "store.zarr"), "--out", str(tmp_path / "decode")]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    frames = tmp_path / "store.zarr" / "frames"
    deadline = time.monotonic() + 120
    while len(store.finished_arrays(tmp_path / "store.zarr", "frames")) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    finished = store.finished_arrays(tmp_path / "store.zarr", "frames")
    assert 3 <= len(finished) < 40, "the run should have been killed midway"
    for name in finished:  # whatever looks finished is complete
        array = store.open_frames(tmp_path / "store.zarr", name)
        assert array.attrs["num_frames"] == array.shape[0] == 40
        assert array[-1].std() > 0
    assert not (tmp_path / "decode" / "decoded.parquet").exists()
    before = {name: (frames / name / "zarr.json").stat().st_mtime_ns for name in finished}

    from schemas.params import load_params

    summary = decode_stage.run(load_params(params).decode, tmp_path / "manifest", videos, tmp_path / "store.zarr",
                               tmp_path / "decode", scheduler="sync")  # fmt: skip
    assert summary.counts["skipped"] == len(finished) and summary.counts["decoded"] == 40 - len(finished)
    assert {name: (frames / name / "zarr.json").stat().st_mtime_ns for name in finished} == before
    assert not any((tmp_path / "store.zarr.partial" / "frames").iterdir())
    assert not (tmp_path / "store.zarr" / ".partial").exists()
    # The resumed store equals an uninterrupted run's.
    clean = tmp_path / "clean"
    decode_stage.run(load_params(params).decode, tmp_path / "manifest", videos, clean / "store.zarr", clean / "decode", scheduler="sync")
    assert tree_bytes(clean / "store.zarr" / "frames") == tree_bytes(frames)
