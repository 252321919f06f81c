"""Faults of the machine and of other runs: a full disk or a refused write stops the stage with one
readable line and blames no video; two runs on one store refuse clearly, and a dead holder leaves
no lock behind. Each case here was found by a fault run against the code before it."""

import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, ffmpeg
from pipeline.storage import faults, locks
from pipeline.storage import store as stores
from pipeline.storage.tables import read_table
from schemas import store as layout
from schemas.params import DecodeParams, FlowParams, ProbeParams
from stages import decode as decode_stage
from stages import flow as flow_stage
from stages import probe as probe_stage


@pytest.fixture(scope="module")
def manifest(fixture_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("manifest")
    probe_stage.run(ProbeParams(), fixture_dir, out, scheduler="sync")
    return out


def decode_cli(manifest, videos, tmp: Path, file_limit: int | None = None) -> subprocess.CompletedProcess:
    def limit():
        if file_limit is not None:  # writes past it fail with EFBIG ("File too large"), as a full disk does
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    command = [sys.executable, "cli.py", "decode", "--params", "params.yaml", "--manifest", str(manifest), "--videos", str(videos),
               "--store", str(tmp / "store.zarr"), "--out", str(tmp / "decode"), "--scheduler", "sync"]  # fmt: skip
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, preexec_fn=limit, timeout=300)


def test_a_full_disk_fails_decode_naming_video_path_and_space_and_the_next_run_completes(manifest, fixture_dir, tmp_path):
    """Before: every video was recorded as `unreadable` and decode exited 0."""
    failed = decode_cli(manifest, fixture_dir, tmp_path, file_limit=64 * 1024)
    assert failed.returncode == 1, failed.stderr
    assert "Traceback" not in failed.stderr
    line = failed.stderr.strip().splitlines()[-1]
    assert line.startswith("error: video '") and "File too large" in line and str(tmp_path / "store.zarr") in line
    assert " free" in line and "needs about" in line
    assert not (tmp_path / "decode" / "decoded.parquet").exists()  # no table claims anything
    assert stores.finished_arrays(tmp_path / "store.zarr", layout.FRAMES_GROUP) == []  # nothing partial published
    assert not any(stores.partial_root(tmp_path / "store.zarr").rglob("zarr.json"))  # its work in progress dropped
    done = decode_cli(manifest, fixture_dir, tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(read_table(tmp_path / "decode" / "decoded.parquet")) == 5
    assert read_table(tmp_path / "decode" / "failures.parquet").num_rows == 0


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.EDQUOT])
def test_a_refused_store_write_stops_decode_and_blames_no_video(manifest, fixture_dir, tmp_path, monkeypatch, code):
    def refuse(store, name, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(Path(store) / "frames" / name / "c" / "0"))

    monkeypatch.setattr(stores, "write_frames", refuse)
    with pytest.raises(faults.EnvironmentFault, match=rf"video '[^']+\.(mp4|avi)': cannot write {tmp_path}/store.zarr/frames/.*{os.strerror(code)}"):
        decode_stage.run(DecodeParams(), manifest, fixture_dir, tmp_path / "store.zarr", tmp_path / "decode", scheduler="sync")
    assert not (tmp_path / "decode").exists()


def test_a_source_that_cannot_be_read_is_still_the_videos_fault(tmp_path):
    source = OSError(errno.EACCES, "Permission denied", str(tmp_path / "videos" / "a.mp4"))
    output = OSError(errno.EACCES, "Permission denied", str(tmp_path / "store.zarr.partial" / "frames" / "x"))
    assert not faults.is_environment(source, (tmp_path / "store.zarr",))
    assert faults.is_environment(output, (tmp_path / "store.zarr",))
    assert faults.is_environment(OSError(errno.ENOSPC, "No space left on device"), ())


def test_a_full_disk_during_flow_names_the_video_drops_its_partial_arrays_and_the_rerun_completes(fixture_flowed, tmp_path, monkeypatch):
    """Before: a raw OSError traceback naming no video, and files left under .partial/."""
    import shutil

    store = tmp_path / "store.zarr"
    shutil.copytree(fixture_flowed / "store.zarr" / "frames", store / "frames")
    (store / "zarr.json").write_bytes((fixture_flowed / "store.zarr" / "zarr.json").read_bytes())
    real_open = stores.open_partial

    class Full:
        def __init__(self, path):
            self.path = path

        def __setitem__(self, key, value):
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(self.path) / "c" / "0"))

    monkeypatch.setattr(stores, "open_partial", Full)
    with pytest.raises(faults.EnvironmentFault) as caught:
        flow_stage.run(FlowParams(method="dis"), fixture_flowed / "decode", store, tmp_path / "flow", scheduler="sync")
    message = str(caught.value)
    assert message.startswith("video '") and "': cannot write" in message and "No space left on device" in message
    assert f"{store}.partial/flow/dis/" in message and " free" in message and "needs about" in message
    assert not any(stores.partial_root(store).rglob("zarr.json")) and not (tmp_path / "flow").exists()
    monkeypatch.setattr(stores, "open_partial", real_open)
    summary = flow_stage.run(FlowParams(method="dis"), fixture_flowed / "decode", store, tmp_path / "flow", scheduler="sync")
    assert summary.counts["computed"] == 5


HOLD = """
import sys, time
from pipeline.storage import locks
with locks.hold(sys.argv[1], "extract-flow"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_run_on_the_same_store_refuses_naming_the_holder_and_a_dead_holder_leaves_no_lock(fixture_flowed, tmp_path):
    """Before: a second extract-flow cleared .partial/ at start-up, deleting the first run's arrays."""
    store = tmp_path / "store.zarr"
    in_progress = stores.partial_root(store) / layout.flow_group("dis") / "some-video.0123"
    in_progress.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(store)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(locks.LockedError, match=rf"in use by extract-flow \(host .+, pid {holder.pid}, started .+\)"):
            flow_stage.run(FlowParams(method="dis"), fixture_flowed / "decode", store, tmp_path / "flow", scheduler="sync")
        with pytest.raises(locks.LockedError):
            decode_stage.run(DecodeParams(), fixture_flowed / "manifest", tmp_path, store, tmp_path / "decode", scheduler="sync")
        assert in_progress.is_dir()  # the first run's work is untouched
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert locks.holder(store)["pid"] == holder.pid  # the file stays, the lock does not
    with locks.hold(store, "test"):
        assert locks.holder(store)["pid"] == os.getpid()


def test_the_cli_prints_one_line_for_a_store_in_use(fixture_flowed, tmp_path):
    store = tmp_path / "store.zarr"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(store)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        result = subprocess.run([sys.executable, "cli.py", "extract-flow", "--params", "params.yaml", "--decoded",
                                 str(fixture_flowed / "decode"), "--store", str(store), "--out", str(tmp_path / "flow")],
                                cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert time.monotonic() - started < 60
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {store} is in use by extract-flow (host ")


THREADS = """
import os, sys
os.sched_setaffinity(0, {0})
from pipeline.trainer import thread_budget
from pipeline.parallel import default_workers
print(thread_budget(0), thread_budget(3), default_workers())
"""


def test_training_and_flow_size_their_pools_to_the_cores_the_process_may_use():
    """Before: every job took every core, and two trainings on 2 cores ran 15x slower per step."""
    one_core = subprocess.run([sys.executable, "-c", THREADS], cwd=REPO, capture_output=True, text=True, check=True)
    assert one_core.stdout.split() == ["1", "3", "1"]  # the affinity, or the setting
    cores = len(os.sched_getaffinity(0))
    two_ranks = subprocess.run([sys.executable, "-c", "from pipeline.trainer import thread_budget; print(thread_budget(0))"],
                               cwd=REPO, capture_output=True, text=True, check=True, env={**os.environ, "LOCAL_WORLD_SIZE": "2"})  # fmt: skip
    assert int(two_ranks.stdout) == max(1, cores // 2)  # torchrun's ranks share the machine's cores


@pytest.fixture(scope="module")
def huge_frames(fixture_dir, tmp_path_factory):
    """A videos root with a synthetic 8000x8000 video (192 MB a frame as RGB, 246 KB as FFV1) beside
    an ordinary one, probed."""
    root = tmp_path_factory.mktemp("huge")
    videos = root / "videos"
    videos.mkdir()
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=8000x8000:r=25", "-frames:v", "3", "-c:v", "ffv1", str(videos / "huge.mkv"))
    shutil.copy(fixture_dir / "static_shot.mp4", videos / "static_shot.mp4")
    probe_stage.run(ProbeParams(), videos, root / "manifest", scheduler="sync")
    assert len(read_table(root / "manifest" / "videos.parquet")) == 2
    return root


def test_a_video_whose_frames_exceed_the_memory_budget_is_refused_before_it_is_decoded(huge_frames, tmp_path):
    """Before: decode.short_side null on a huge video read 32-frame blocks of it whatever their size."""
    summary = decode_stage.run(DecodeParams(short_side=None), huge_frames / "manifest", huge_frames / "videos", tmp_path / "store.zarr",
                               tmp_path / "decode", scheduler="sync")  # fmt: skip
    assert summary.counts["decoded"] == 1 and summary.counts["failed"] == 1
    (row,) = read_table(tmp_path / "decode" / "failures.parquet").to_pylist()
    assert row["relpath"] == "huge.mkv" and row["reason"] == "too_large"
    assert row["detail"].startswith("a frame takes 183.1 MiB, and writing a shard of 256 frames needs about 94,300 MiB, more than "
                                    "the 1,024 MiB a decode may use: set decode.short_side (e.g. 128), lower decode.shard_frames")


UNDER_A_MEMORY_LIMIT = """
import resource, sys
from schemas.params import DecodeParams
from stages import decode as stage
size = int(next(line for line in open("/proc/self/status") if line.startswith("VmSize")).split()[1]) * 1024
limit = size + 2 * 2**30  # 2 GiB more than this process, its imports done, already maps
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
print(stage.run(DecodeParams(short_side=None, memory_mb=200_000), *sys.argv[1:], scheduler="sync").text())
"""


def test_a_reader_out_of_memory_fails_its_video_at_once_and_the_rest_decode(huge_frames, tmp_path):
    """Before: under a memory limit the thread reading FFmpeg's output died of MemoryError (a block
    of the huge video is 5 GB) and decode waited forever. Here decode.memory_mb says more than the
    process may have, as on a machine with less memory than the params assume."""
    command = [sys.executable, "-c", UNDER_A_MEMORY_LIMIT, str(huge_frames / "manifest"), str(huge_frames / "videos"),
               str(tmp_path / "store.zarr"), str(tmp_path / "decode")]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "decoded 1" in done.stdout and "failed 1" in done.stdout
    (row,) = read_table(tmp_path / "decode" / "failures.parquet").to_pylist()
    assert row["relpath"] == "huge.mkv" and row["reason"] == "too_large"
    assert "out of memory reading FFmpeg's output in blocks of" in row["detail"] and row["detail"].endswith("gives less than the memory budget says: lower decode.memory_mb, or set decode.short_side")
    assert [r["relpath"] for r in read_table(tmp_path / "decode" / "decoded.parquet").to_pylist()] == ["static_shot.mp4"]
