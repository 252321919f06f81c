"""Shared test fixtures: the committed 5-video fixture, and a folder of every kind of bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import synth
from pipeline.io.encode import encode_video
from pipeline.io.ffmpeg_binary import ffmpeg_exe
from schemas import store as layout

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_VIDEOS = sorted(p.name for p in FIXTURES.iterdir() if p.suffix in (".mp4", ".avi", ".webm"))
REPO = Path(__file__).parent.parent


NOT_OUTPUTS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}  # tools' own caches


def project_files() -> set[str]:
    """Every file and folder in the project's checkout but the tools' caches, and what lies beside it."""
    found = {f"../{name}" for name in os.listdir(REPO.parent)}
    for folder, subfolders, files in os.walk(REPO):
        subfolders[:] = [name for name in subfolders if name not in NOT_OUTPUTS and not name.endswith(".egg-info")]
        found.update(os.path.relpath(os.path.join(folder, name), REPO) for name in subfolders + files)
    return found


@pytest.fixture(scope="session", autouse=True)
def run_records_outside_the_checkout(tmp_path_factory):
    """Every command records its run (stages/common.py record_run) under data.runs, data/runs by
    default: in the tests, in a folder of their own (processes they start inherit it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MSCL_RUNS", str(tmp_path_factory.mktemp("runs")))
        yield


@pytest.fixture(scope="session", autouse=True)
def nothing_written_outside_the_tests_folders():
    """No test writes into the project or beside it (a store refused there, say, must leave no lock
    and no zarr.json): everything a test makes lives under its temporary folders."""
    before = project_files()
    yield
    after = project_files()
    assert after == before, f"written by the tests into the project: {sorted(after - before)[:10]}, removed: {sorted(before - after)[:10]}"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    assert len(FIXTURE_VIDEOS) == 5, FIXTURE_VIDEOS
    return FIXTURES


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root, by relative path: for byte-for-byte comparisons of outputs."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def store_bytes(store: Path) -> dict[str, bytes]:
    """tree_bytes of a store with the one thing two stores never share taken out of its root's
    metadata: the identity marker (a random id and a time, by design; pipeline/storage/ownership.py)."""
    files = tree_bytes(store)
    root = json.loads(files.pop("zarr.json"))
    assert root["attributes"].pop(layout.STORE_MARKER)["id"]
    files["zarr.json"] = json.dumps(root).encode()
    return files


def ffmpeg(*args: str) -> None:
    """Run FFmpeg for building test inputs; fail the test with FFmpeg's message."""
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _corrupt_middle(data: bytes, seed: int = 0) -> bytes:
    """Scramble a stretch in the middle of a file: the stream decodes only in part."""
    buf = bytearray(data)
    rng = np.random.default_rng(seed)
    start = len(buf) // 2
    buf[start : start + 4000] = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    return bytes(buf)


# name -> what the probe must make of it: ("ok" | "degraded", frames or None) or ("failed", reason)
BAD_EXPECTATIONS: dict[str, tuple[str, object]] = {
    "empty.mp4": ("failed", "empty_file"),
    "truncated.mp4": ("failed", "not_a_video"),
    "random_bytes.mp4": ("failed", "not_a_video"),
    "audio_only.mp4": ("failed", "no_video_stream"),
    "single_frame.mp4": ("failed", "too_few_frames"),
    "short_10_frames.mp4": ("ok", 10),
    "corrupt_middle.mp4": ("degraded", None),
    "variable_rate.mkv": ("ok", 30),
    "rotated_90.mp4": ("ok", 40),
    "odd_size_161x121.webm": ("ok", 40),
    "gray.mkv": ("ok", 12),
    "ten_bit.mp4": ("ok", 12),
    "it's a \"quoted\" name.avi": ("ok", 40),
    "-leading-dash.mp4": ("ok", 36),
    "with spaces/clip one.mp4": ("ok", 36),
    "UPPER.MP4": ("ok", 36),
    "anamorphic_sar_2_1.mp4": ("ok", 36),
    "self_loop.mp4": ("failed", "unreadable"),
}


@pytest.fixture(scope="session")
def bad_videos(tmp_path_factory) -> Path:
    """A videos root holding every bad input the probe must survive, plus a symlink loop."""
    root = tmp_path_factory.mktemp("bad_videos")
    static, pan = FIXTURES / "static_shot.mp4", FIXTURES / "global_pan.avi"
    (root / "empty.mp4").write_bytes(b"")
    (root / "truncated.mp4").write_bytes(static.read_bytes()[: static.stat().st_size // 3])
    (root / "random_bytes.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", str(root / "audio_only.mp4"))
    frames = list(synth.render_frames(synth.global_motion_scene(3, width=96, height=72, frames=12, fps=(25, 1), velocity=(1, 0))))
    encode_video(frames[:1], root / "single_frame.mp4", fps=25)
    encode_video(frames[:10], root / "short_10_frames.mp4", fps=25)
    # A long GOP-less H.264 stream so that scrambled bytes in the middle cost frames but not the file.
    long_frames = list(synth.render_frames(synth.global_motion_scene(4, width=96, height=72, frames=60, fps=(25, 1), velocity=(1, 1))))
    encode_video(long_frames, root / "clean_long.mp4", fps=25, extra={"g": 10})
    (root / "corrupt_middle.mp4").write_bytes(_corrupt_middle((root / "clean_long.mp4").read_bytes()))
    (root / "clean_long.mp4").unlink()
    # Variable frame rate: 15 frames at 25 fps, then 15 at 50 fps, timestamps in milliseconds.
    ffmpeg("-i", str(static), "-frames:v", "30", "-vf", "settb=1/1000,setpts='if(lt(N,15),N*40,600+(N-15)*20)/(1000*TB)'",
           "-fps_mode", "passthrough", "-c:v", "libx264", str(root / "variable_rate.mkv"))  # fmt: skip
    ffmpeg("-display_rotation", "90", "-i", str(FIXTURES / "object_on_pan.mp4"), "-c", "copy", str(root / "rotated_90.mp4"))
    shutil.copy(FIXTURES / "rotate_zoom.webm", root / "odd_size_161x121.webm")
    ffmpeg("-i", str(static), "-vf", "setsar=2/1", "-c:v", "libx264", str(root / "anamorphic_sar_2_1.mp4"))  # wide pixels
    encode_video(frames, root / "gray.mkv", fps=25, codec="ffv1", extra={"pix_fmt": "gray"})
    encode_video(frames, root / "ten_bit.mp4", fps=25, extra={"pix_fmt": "yuv420p10le"})
    shutil.copy(pan, root / "it's a \"quoted\" name.avi")
    shutil.copy(static, root / "-leading-dash.mp4")
    (root / "with spaces").mkdir()
    shutil.copy(static, root / "with spaces" / "clip one.mp4")
    shutil.copy(static, root / "UPPER.MP4")
    (root / "notes.txt").write_text("not a video, ignored by extension")
    (root / "loop").mkdir()
    os.symlink("..", root / "loop" / "back_up")  # a directory symlink loop
    os.symlink("self_loop.mp4", root / "self_loop.mp4")  # a file symlink pointing at itself
    return root


@pytest.fixture(scope="session")
def fixture_flowed(fixture_dir, tmp_path_factory) -> Path:
    """The fixture videos probed, decoded (short side 128) and with DIS flow: manifest/, store.zarr/,
    decode/ and flow/ under the returned folder. Shared read-only by every test module that needs it."""
    from schemas.params import DecodeParams, FlowParams, ProbeParams
    from stages import decode as decode_stage
    from stages import flow as flow_stage
    from stages import probe as probe_stage

    root = tmp_path_factory.mktemp("flowed")
    probe_stage.run(ProbeParams(), fixture_dir, root / "manifest", scheduler="sync")
    decode_stage.run(DecodeParams(), root / "manifest", fixture_dir, root / "store.zarr", root / "decode", scheduler="sync")
    flow_stage.run(FlowParams(method="dis"), root / "decode", root / "store.zarr", root / "flow", scheduler="sync")
    return root


@pytest.fixture(scope="module")
def fixture_index(fixture_flowed, tmp_path_factory):
    """The fixture's clip index (default sample params: 25 selected clips of 8 frames, stride 4)."""
    from schemas.params import SampleParams
    from stages import sample as sample_stage

    out = tmp_path_factory.mktemp("index")
    sample_stage.run(SampleParams(), fixture_flowed / "flow", fixture_flowed / "store.zarr", out, scheduler="sync")
    return out / "clips.parquet"


@pytest.fixture(scope="module")
def store(fixture_flowed):
    """The fixture's store: its five videos' frames and DIS flow."""
    return fixture_flowed / "store.zarr"


@pytest.fixture(scope="session")
def demo_sampled(tmp_path_factory) -> Path:
    """A small demo dataset (6 classes x 2 videos, 40 frames) through every data stage with DIS flow:
    demo/, manifest/, store.zarr/, decode/, flow/dis and sample/ under the returned folder."""
    from schemas.params import DecodeParams, FlowParams, MakeDemoParams, ProbeParams, SampleParams
    from stages import decode as decode_stage
    from stages import flow as flow_stage
    from stages import make_demo as make_demo_stage
    from stages import probe as probe_stage
    from stages import sample as sample_stage

    root = tmp_path_factory.mktemp("demo_sampled")
    make_demo_stage.run(MakeDemoParams(videos_per_class=2, frames=40), root / "demo", scheduler="sync")
    probe_stage.run(ProbeParams(), root / "demo" / "videos", root / "manifest", scheduler="sync")
    decode_stage.run(DecodeParams(), root / "manifest", root / "demo" / "videos", root / "store.zarr", root / "decode", scheduler="sync")
    flow_stage.run(FlowParams(method="dis"), root / "decode", root / "store.zarr", root / "flow", scheduler="sync")
    sample_stage.run(SampleParams(), root / "flow", root / "store.zarr", root / "sample", scheduler="sync")
    return root
