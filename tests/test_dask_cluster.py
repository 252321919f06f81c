"""Stages on dask: a real `dask scheduler` with two `dask worker` processes on loopback, and the
default local cluster, give the same outputs as an in-process run."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, store_bytes
from pipeline.storage.tables import read_table
from schemas.params import DecodeParams, ProbeParams
from stages import decode as decode_stage
from stages import probe as probe_stage

DASK = str(Path(sys.executable).parent / "dask")


@pytest.fixture
def cluster(tmp_path):
    """Scheduler and two single-threaded workers as separate processes, like a user's cluster."""
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    common = {"cwd": tmp_path, "env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", ":0",
                               "--scheduler-file", str(scheduler_file)], **common)]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        for _ in range(2):
            procs.append(subprocess.Popen([DASK, "worker", address, "--nthreads", "1", "--nworkers", "1",
                                           "--host", "127.0.0.1", "--no-dashboard"], **common))  # fmt: skip
        from dask.distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
            assert len(client.scheduler_info()["workers"]) == 2
        yield address
    finally:
        for proc in reversed(procs):
            proc.kill()  # the test is over; no need for a graceful shutdown
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_both(videos: Path, out: Path, scheduler: str | None, workers: int | None = None):
    probe_stage.run(ProbeParams(), videos, out / "manifest", scheduler=scheduler, workers=workers)
    summary = decode_stage.run(DecodeParams(), out / "manifest", videos, out / "store.zarr", out / "decode",
                               scheduler=scheduler, workers=workers)  # fmt: skip
    return summary


@pytest.fixture(scope="module")
def reference(fixture_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sync")
    run_both(fixture_dir, out, "sync")
    return out


def assert_same(out: Path, reference: Path):
    assert store_bytes(out / "store.zarr") == store_bytes(reference / "store.zarr")
    for table in ("manifest/videos.parquet", "manifest/failures.parquet", "decode/decoded.parquet"):
        assert read_table(out / table).to_pylist() == read_table(reference / table).to_pylist()


def test_external_cluster_gives_the_same_outputs(cluster, fixture_dir, reference, tmp_path):
    summary = run_both(fixture_dir, tmp_path, cluster)
    assert summary.counts["decoded"] == 5
    assert_same(tmp_path, reference)


def test_default_local_cluster_gives_the_same_outputs(fixture_dir, reference, tmp_path):
    summary = run_both(fixture_dir, tmp_path, None, workers=2)
    assert summary.counts["decoded"] == 5
    assert_same(tmp_path, reference)


def test_unreachable_scheduler_is_a_clear_error(fixture_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.parallel.CONNECT_TIMEOUT", "2s")
    with pytest.raises(OSError, match="cannot reach the dask scheduler at tcp://127.0.0.1:9 within 2s"):
        probe_stage.run(ProbeParams(), fixture_dir, tmp_path, scheduler="tcp://127.0.0.1:9")
