"""Outputs under kills and power loss (pipeline/storage/durable.py, store.publish): an array is never seen
without its shards, a stage's tables are replaced together, leftovers of killed runs are swept at
the next start, files and folders are fsynced, outputs honour the umask, and torch files have the
same bytes every time. Each test failed on the code before these guarantees (issue 16)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.storage import durable, store
from pipeline.storage.tables import FileSet, read_table, sweep, table_metadata, write_table
from pipeline.trainer import save_atomic
from schemas import store as layout
from schemas.params import MakeDemoParams, ProbeParams
from stages import make_demo as make_demo_stage
from stages import probe as probe_stage


class Killed(BaseException):
    """Stands for a SIGKILL in this process: nothing after the point runs (no `except Exception`)."""


def frames(value: int, count: int = 20) -> np.ndarray:
    return np.full((count, 6, 5, 3), value, np.uint8)


def write(root: Path, name: str, value: int, count: int = 20) -> None:
    store.write_frames(root, name, [frames(value, count)], height=6, width=5, chunk_frames=4, shard_frames=8,
                       attrs={"value": value})  # fmt: skip


def partial_of(root: Path, name: str, value: int) -> Path:
    path = store.create_partial(root, layout.FRAMES_GROUP, name, shape=(20, 6, 5, 3), dtype="uint8", chunks=(4, 6, 5, 3),
                                shards=(8, 6, 5, 3), axes=layout.FRAMES_AXES)  # fmt: skip
    store.open_partial(path)[:] = frames(value)
    return path


def visible(root: Path, name: str) -> int | None:
    """The value of the array `name` as a reader finds it: None if there is none; it must read whole."""
    if name not in store.finished_arrays(root, layout.FRAMES_GROUP):
        return None
    array = store.open_frames(root, name)  # checks every shard file is there
    data = array[:]
    assert (data == data.flat[0]).all() and len(data) == 20
    return int(data.flat[0])


def rmtree_killed_midway(path, *args, **kwargs):
    """shutil.rmtree killed after deleting the shard files, before zarr.json."""
    for shard in sorted(Path(path).rglob("c/**/*")):
        if shard.is_file():
            shard.unlink()
    raise Killed()


def test_publishing_over_an_array_never_shows_it_without_its_shards(tmp_path, monkeypatch):
    root = tmp_path / "store.zarr"
    write(root, "v", 1)
    partial = partial_of(root, "v", 2)
    monkeypatch.setattr(store.shutil, "rmtree", rmtree_killed_midway)
    try:
        store.publish(root, layout.FRAMES_GROUP, "v", partial, {"value": 2})
    except Killed:
        pass
    # The old code deleted the old array in place first: zarr.json stayed, its shards were gone.
    assert visible(root, "v") in (1, 2)
    monkeypatch.undo()
    store.clear_partial(root, layout.FRAMES_GROUP)  # the next start
    assert visible(root, "v") == 2
    assert not [p for p in store.partial_root(root).rglob("*") if p.is_file()]


def test_removing_an_array_never_shows_it_without_its_shards(tmp_path, monkeypatch):
    root = tmp_path / "store.zarr"
    write(root, "v", 1)
    monkeypatch.setattr(store.shutil, "rmtree", rmtree_killed_midway)
    with pytest.raises(Killed):
        store.remove_array(root, layout.FRAMES_GROUP, "v")
    assert visible(root, "v") is None  # gone whole (its remains are in the partial root)
    monkeypatch.undo()
    store.clear_partial(root, layout.FRAMES_GROUP)
    assert not [p for p in store.partial_root(root).rglob("*") if p.is_file()]


@pytest.mark.parametrize("point", ["publish.aside", "publish.renamed"])
def test_a_kill_inside_publish_leaves_the_old_array_none_or_the_new(point, tmp_path, monkeypatch):
    root = tmp_path / "store.zarr"
    write(root, "v", 1)
    partial = partial_of(root, "v", 2)

    def kill_point(name: str) -> None:
        if name == point:
            raise Killed()

    monkeypatch.setattr(durable, "kill_point", kill_point)
    with pytest.raises(Killed):
        store.publish(root, layout.FRAMES_GROUP, "v", partial, {"value": 2})
    assert visible(root, "v") == (None if point == "publish.aside" else 2)
    store.clear_partial(root, layout.FRAMES_GROUP)
    assert not [p for p in store.partial_root(root).rglob("*") if p.is_file()]


@pytest.fixture
def two_roots(fixture_dir, tmp_path) -> tuple[Path, Path]:
    """Two videos roots whose manifests differ in every table (a bad file in the second)."""
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    shutil.copy(fixture_dir / "static_shot.mp4", old / "a.mp4")
    (old / "empty.mp4").write_bytes(b"")
    shutil.copy(fixture_dir / "global_pan.avi", new / "b.avi")
    (new / "bad.mp4").write_bytes(b"not a video at all")
    return old, new


@pytest.mark.parametrize("kill_at", [1, 2, 3])
def test_a_stage_replaces_its_tables_together(kill_at, two_roots, tmp_path, monkeypatch):
    """A kill at any rename of the stage's tables: each table a reader reads is from one run."""
    old, new = two_roots
    out = tmp_path / "manifest"
    probe_stage.run(ProbeParams(), old, out, scheduler="sync")
    calls = []
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        calls.append(dst)
        if len(calls) == kill_at:
            raise Killed()
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed):
        probe_stage.run(ProbeParams(), new, out, scheduler="sync")
    monkeypatch.undo()
    names = ("videos.parquet", "failures.parquet")
    for name in names:
        read_table(out / name)  # as a reader would (which first finishes a committed set)
    roots = {table_metadata(out / name)["videos_root"] for name in names}
    assert len(roots) == 1, f"killed at rename {kill_at}: the tables come from runs over {roots}"
    sweep(out)
    assert sorted(p.name for p in out.iterdir()) == ["failures.parquet", "videos.parquet"]


def test_a_killed_runs_temporary_files_are_swept_at_the_next_start(fixture_dir, tmp_path):
    out = tmp_path / "manifest"
    out.mkdir()
    (out / ".videos.parquet.1a2b3c.tmp").write_bytes(b"half a table")
    (out / ".failures.parquet.tmpk2j_x8.tmp").write_bytes(b"")
    (out / "notes.txt").write_text("not ours to delete")
    probe_stage.run(ProbeParams(), fixture_dir, out, scheduler="sync")
    assert sorted(p.name for p in out.iterdir()) == ["failures.parquet", "notes.txt", "videos.parquet"]


def test_a_committed_set_is_finished_once_whoever_finds_it(tmp_path):
    out = tmp_path / "t"
    schema = pa.schema([("x", pa.int64())])
    write_table(out / "a.parquet", [{"x": 1}], schema)
    (out / "gone.pt").write_bytes(b"checkpoint")
    files = FileSet(out)
    write_table(out / "a.parquet", [{"x": 2}], schema, files=files)
    files.stage("b.txt", lambda tmp: Path(tmp).write_text("two"))
    files.remove("gone.pt")
    journal = {"replace": {name: tmp.name for name, tmp in files.staged.items()}, "remove": ["gone.pt"]}
    durable.atomic_write_bytes(out / durable.JOURNAL, lambda tmp: Path(tmp).write_text(json.dumps(journal)))  # commit
    os.replace(out / journal["replace"]["b.txt"], out / "b.txt")  # then killed after the first rename
    assert read_table(out / "a.parquet").to_pylist() == [{"x": 2}]  # a reader finishes the set first
    assert (out / "b.txt").read_text() == "two" and not (out / "gone.pt").exists()
    assert not durable.recover(out)  # done: nothing more to do
    assert sorted(p.name for p in out.iterdir()) == ["a.parquet", "b.txt"]


def test_a_journal_naming_files_elsewhere_is_refused(tmp_path):
    (tmp_path / durable.JOURNAL).write_text('{"replace": {"../outside": ".x.tmp"}, "remove": []}')
    with pytest.raises(ValueError, match="not a file of this folder"):
        durable.recover(tmp_path)


@pytest.fixture
def fsynced(monkeypatch) -> list[str]:
    """The paths fsynced from now on."""
    seen: list[str] = []
    real = os.fsync

    def fsync(fd):
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_tables_models_and_arrays_are_fsynced_before_and_after_their_rename(tmp_path, fsynced, monkeypatch):
    schema = pa.schema([("x", pa.int64())])
    write_table(tmp_path / "t" / "a.parquet", [{"x": 1}], schema)
    assert str(tmp_path / "t") in fsynced  # the folder, after the rename
    assert any(Path(p).name.startswith(".a.parquet.") for p in fsynced)  # the file, before it
    fsynced.clear()
    save_atomic({"w": torch.zeros(3)}, tmp_path / "m" / "model.pt")
    assert str(tmp_path / "m") in fsynced and any(Path(p).name.startswith(".model.pt.") for p in fsynced)
    fsynced.clear()
    root = tmp_path / "store.zarr"
    write(root, "v", 1)
    assert str(root / "frames") in fsynced  # the group, after the rename
    built = [Path(p) for p in fsynced if f"{layout.PARTIAL_SUFFIX}/" in p]
    assert {"zarr.json", "0"} <= {p.name for p in built}  # metadata and shard files, before it
    assert sum(p.name == "0" and p.parent.name == "0" for p in built) >= 1
    fsynced.clear()
    monkeypatch.setenv("MSCL_FSYNC", "0")
    write_table(tmp_path / "t" / "a.parquet", [{"x": 2}], schema)
    write(root, "w", 2)
    assert fsynced == []


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_outputs_honour_the_umask(umask, tmp_path):
    previous = os.umask(umask)
    try:
        write_table(tmp_path / "t" / "a.parquet", [{"x": 1}], pa.schema([("x", pa.int64())]))
        save_atomic({"w": torch.zeros(3)}, tmp_path / "t" / "model.pt")
        with FileSet(tmp_path / "t") as files:
            files.stage("metrics.json", lambda tmp: Path(tmp).write_text("{}"))
        write(tmp_path / "store.zarr", "v", 1)
        demo = MakeDemoParams(classes=["zoom_in", "oscillate"], videos_per_class=1, frames=4, width=32, height=24)
        make_demo_stage.run(demo, tmp_path / "demo", scheduler="sync")
    finally:
        os.umask(previous)
    for path in [tmp_path / "t", *(tmp_path / "t").iterdir(), *(tmp_path / "store.zarr").rglob("*"), tmp_path / "demo",
                 *(tmp_path / "demo").rglob("*")]:  # fmt: skip
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert oct(path.stat().st_mode & 0o777) == oct(expected), path


def test_torch_files_have_the_same_bytes_every_time(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "config": {"a": 1}}
    save_atomic(state, tmp_path / "a" / "model.pt")
    save_atomic(state, tmp_path / "b" / "model.pt")
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "a" / "model.pt", weights_only=True)["w"], state["w"])
