"""pipeline/storage/ownership.py: a stage writes only into this pipeline's own store, and deletes only the
arrays that store wrote. Each case here was found by a fault run against the code before it, where
decode and import-rawframes wrote zarr.json files into a user's folder, created a lock and a
.partial beside it, and deleted arrays they had not written ("stale arrays removed 2")."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import REPO, store_bytes, tree_bytes
from pipeline.storage import locks, ownership
from pipeline.storage import store as stores
from pipeline.storage.tables import read_table, write_table
from schemas import store as layout
from schemas.params import DecodeParams, FlowParams, ProbeParams
from schemas.tables import VIDEOS
from stages import decode as decode_stage
from stages import flow as flow_stage
from stages import import_rawframes as import_stage
from stages import probe as probe_stage


@pytest.fixture(scope="module")
def manifest(fixture_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("manifest")
    probe_stage.run(ProbeParams(), fixture_dir, out, scheduler="sync")
    return out


def decode(manifest, videos, store, out, **params):
    return decode_stage.run(DecodeParams(short_side=32, **params), manifest, videos, store, out, scheduler="sync")


def users_folder(root: Path) -> Path:
    """A folder of someone else's, shaped like a store: a zarr array of theirs under frames/, a plain
    folder under flow/, and files."""
    folder = root / "escape-target"
    zarr.open_group(str(folder), mode="w", zarr_format=3).create_group("frames").create_array("holiday", shape=(4, 2), dtype="uint8")[:] = 7
    (folder / "flow" / "farneback" / "other").mkdir(parents=True)
    (folder / "flow" / "farneback" / "other" / "notes.txt").write_text("mine")
    (folder / "README.txt").write_text("my holiday photos")
    return folder


def nothing_written_beside(folder: Path, before: dict[str, bytes]) -> None:
    assert tree_bytes(folder) == before  # not a byte changed, nothing added, nothing deleted
    assert not folder.with_name(folder.name + ".lock").exists() and not folder.with_name(folder.name + ".partial").exists()


def test_a_folder_that_is_not_a_store_is_refused_by_every_writer_and_nothing_is_written(manifest, fixture_dir, fixture_flowed, tmp_path):
    folder = users_folder(tmp_path)
    before = tree_bytes(folder)
    with pytest.raises(ownership.StoreRefused, match=r"escape-target: is not this pipeline's store .*README.txt"):
        decode(manifest, fixture_dir, folder, tmp_path / "decode")
    with pytest.raises(ownership.StoreRefused, match="is not this pipeline's store"):
        flow_stage.run(FlowParams(method="dis"), fixture_flowed / "decode", folder, tmp_path / "flow", scheduler="sync")
    tree = tmp_path / "rawframes" / "v"
    tree.mkdir(parents=True)
    with pytest.raises(ownership.StoreRefused, match="is not this pipeline's store"):
        import_stage.run(tree.parent, folder, tmp_path / "d", tmp_path / "f", DecodeParams(), FlowParams(), bound=None, fps=25.0,
                         scheduler="sync")  # fmt: skip
    nothing_written_beside(folder, before)
    # Only this pipeline's entries, but arrays no table of the project lists: still not this store.
    (folder / "README.txt").unlink()
    shutil.rmtree(folder / "flow")
    before = tree_bytes(folder)
    with pytest.raises(ownership.StoreRefused, match=r"holds arrays that no table of this project lists \(frames/holiday\)"):
        decode(manifest, fixture_dir, folder, tmp_path / "decode")
    nothing_written_beside(folder, before)
    assert np.all(zarr.open_array(str(folder / "frames" / "holiday"), mode="r")[:] == 7)


@pytest.mark.parametrize("where", ["root", "project", "cwd", "videos", "above videos"])
def test_the_root_the_project_and_the_videos_and_what_holds_them_are_refused(where, manifest, fixture_dir, tmp_path, monkeypatch):
    videos = tmp_path / "outer" / "videos"
    shutil.copytree(fixture_dir, videos)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    store, why = {"root": ("/", "is the file system's root"), "project": (REPO, "is the project's folder"),
                  "cwd": (work, "is the current folder"), "videos": (videos, "is the videos root"),
                  "above videos": (tmp_path / "outer", "holds the videos root")}[where]  # fmt: skip
    outside = {path: tree_bytes(path) for path in (videos, work)}
    beside = sorted(os.listdir(Path(store).parent)) if where != "root" else None
    with pytest.raises(ownership.StoreRefused, match=why):
        decode(manifest, videos, store, tmp_path / "decode")
    assert {path: tree_bytes(path) for path in (videos, work)} == outside
    if beside is not None:  # no lock or .partial beside it (the marker check outside the test's folder)
        assert sorted(os.listdir(Path(store).parent)) == beside
    assert not (REPO / "zarr.json").exists() and not (REPO.parent / (REPO.name + ".lock")).exists()


def test_a_new_store_carries_its_marker_and_lists_what_it_wrote(manifest, fixture_dir, tmp_path):
    summary = decode(manifest, fixture_dir, tmp_path / "store.zarr", tmp_path / "decode")
    mark = ownership.marker(tmp_path / "store.zarr")
    assert mark["layout"] == layout.STORE_VERSION and len(mark["id"]) == 32
    ids = sorted(row["video_id"] for row in read_table(manifest / "videos.parquet").to_pylist())
    assert zarr.open_group(str(tmp_path / "store.zarr" / "frames"), mode="r").attrs[layout.OWNED_ATTR] == ids
    assert ownership.examine(tmp_path / "store.zarr") == "ours" and summary.counts["decoded"] == 5
    other = tmp_path / "other.zarr"
    decode(manifest, fixture_dir, other, tmp_path / "decode2")
    assert ownership.marker(other)["id"] != mark["id"]  # each store its own identity
    assert store_bytes(other) == store_bytes(tmp_path / "store.zarr")  # and the same bytes otherwise
    # An empty folder is a new store too; a file is not a store.
    (tmp_path / "empty").mkdir()
    assert ownership.examine(tmp_path / "empty") == "new"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ownership.StoreRefused, match="exists and is not a folder"):
        ownership.examine(tmp_path / "file")


def test_only_the_stores_own_stale_arrays_are_removed_others_are_reported(manifest, fixture_dir, tmp_path):
    store = tmp_path / "store.zarr"
    decode(manifest, fixture_dir, store, tmp_path / "decode")
    rows = read_table(manifest / "videos.parquet", VIDEOS).to_pylist()
    smaller = tmp_path / "smaller"
    write_table(smaller / "videos.parquet", rows[1:], VIDEOS)  # one video gone from the manifest
    zarr.create_array(store=str(store / "frames" / "holiday"), shape=(3,), dtype="uint8", zarr_format=3)[:] = 5  # someone's own
    summary = decode(smaller, fixture_dir, store, tmp_path / "decode")
    assert summary.counts["stale arrays removed"] == 1
    assert stores.finished_arrays(store, layout.FRAMES_GROUP) == sorted(["holiday", *(row["video_id"] for row in rows[1:])])
    assert any(note.startswith("left in place, not written by this store: frames/holiday;") for note in summary.notes)
    assert zarr.open_array(str(store / "frames" / "holiday"), mode="r")[:].tolist() == [5, 5, 5]


def test_every_array_a_run_will_write_is_listed_before_its_work_starts(tmp_path):
    """So that a killed run's arrays are its store's: listed before the first is published."""
    store = tmp_path / "store.zarr"
    with ownership.owning(store, "test", protected={}) as owner:
        owner.prepare_group(layout.FRAMES_GROUP, {"a-1", "b-2"})
        assert zarr.open_group(str(store / "frames"), mode="r").attrs[layout.OWNED_ATTR] == ["a-1", "b-2"]
        assert stores.finished_arrays(store, layout.FRAMES_GROUP) == []
        assert locks.holder(store)["stage"] == "test"


def strip_marks(store: Path) -> None:
    """Make `store` look as stores were before markers and listings existed."""
    for meta in [store / "zarr.json", *store.glob("frames/zarr.json"), *store.glob("flow/*/zarr.json")]:
        data = json.loads(meta.read_text())
        data.get("attributes", {}).pop(layout.STORE_MARKER, None)
        data.get("attributes", {}).pop(layout.OWNED_ATTR, None)
        meta.write_text(json.dumps(data))


@pytest.mark.parametrize("root_metadata", [True, False], ids=["as written", "restored by dvc without its root zarr.json"])
def test_a_store_from_before_the_marker_is_adopted_when_the_projects_tables_list_its_arrays(root_metadata, manifest, fixture_dir, tmp_path):
    store = tmp_path / "store.zarr"
    decode(manifest, fixture_dir, store, tmp_path / "decode")
    flow_stage.run(FlowParams(method="dis"), tmp_path / "decode", store, tmp_path / "flow", scheduler="sync")
    strip_marks(store)
    if not root_metadata:
        (store / "zarr.json").unlink()
    frames = tree_bytes(store / "frames")
    with pytest.raises(ownership.StoreRefused, match="that no table of this project lists"):
        ownership.examine(store, ["frames/x"])  # tables that name none of its arrays vouch for nothing
    assert ownership.examine(store, [f"frames/{row['video_id']}" for row in read_table(manifest / "videos.parquet").to_pylist()]) == "legacy"
    summary = decode(manifest, fixture_dir, store, tmp_path / "decode")
    assert summary.counts["skipped"] == 5 and any("adopted" in note for note in summary.notes)
    assert ownership.marker(store) is not None
    assert {k: v for k, v in tree_bytes(store / "frames").items() if k != "zarr.json"} == {k: v for k, v in frames.items() if k != "zarr.json"}
    again = flow_stage.run(FlowParams(method="dis"), tmp_path / "decode", store, tmp_path / "flow", scheduler="sync")
    assert again.counts["skipped"] == 5  # the flow group's listing is seeded from the flow table
    assert len(zarr.open_group(str(store / "flow" / "dis"), mode="r").attrs[layout.OWNED_ATTR]) == 5
