"""Ids and paths read from tables stay inside their roots; no symlink is read when told not to; no
file is ever unpickled. Each case here was found by a fault run against the code before it."""

import ast
import os
import pickle
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from conftest import REPO
from pipeline.data.dataset import ClipIndex
from pipeline.data.splits import read_labels
from pipeline.io.scan import scan_videos
from pipeline.storage import store
from pipeline.storage.tables import read_table, write_table
from schemas.params import DecodeParams, Params, ProbeParams
from schemas.paths import UnsafeValueError, id_problem, relpath_problem
from schemas.tables import VIDEOS
from stages import decode as decode_stage
from stages import probe as probe_stage


@pytest.fixture(scope="module")
def manifest(fixture_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("manifest")
    probe_stage.run(ProbeParams(), fixture_dir, out, scheduler="sync")
    return out


def tampered_manifest(manifest: Path, tmp: Path, **change) -> Path:
    rows = read_table(manifest / "videos.parquet", VIDEOS).to_pylist()
    rows[1].update(change)
    out = tmp / "tampered"
    write_table(out / "videos.parquet", rows, VIDEOS)
    return out


@pytest.mark.parametrize("value", ["../../somedir", "..", ".", "", "a/b", "/abs", ".hidden", "-x", "a\x00b", 3])
def test_unsafe_ids_are_named(value):
    assert id_problem(value)


@pytest.mark.parametrize("value", ["../escape.mp4", "a/../../b.mp4", "/etc/passwd", "", "a//b.mp4", "./a.mp4", "a\x00.mp4"])
def test_unsafe_relpaths_are_named(value):
    assert relpath_problem(value)


def test_ids_and_relpaths_the_scan_makes_are_safe(fixture_dir):
    for video in scan_videos(fixture_dir, ProbeParams().extensions).videos:
        assert id_problem(video.video_id) is None and relpath_problem(video.relpath) is None


def test_a_manifest_id_that_climbs_out_of_the_store_deletes_nothing(manifest, fixture_dir, tmp_path):
    """Before: decode removed `<store>/frames/../../somedir` for a missing video with this id."""
    victim = tmp_path / "somedir"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    bad = tampered_manifest(manifest, tmp_path, video_id="../../somedir", relpath="missing.mp4")
    with pytest.raises(UnsafeValueError, match=r"videos.parquet, row 1: video_id '\.\./\.\./somedir'"):
        decode_stage.run(DecodeParams(), bad, fixture_dir, tmp_path / "store.zarr", tmp_path / "decode", scheduler="sync")
    assert (victim / "precious.txt").read_text() == "keep me"
    assert not (tmp_path / "decode").exists()  # refused before anything was written


def test_a_manifest_relpath_outside_the_videos_root_is_refused(manifest, fixture_dir, tmp_path):
    """Before: a row with ../escape.mp4 was decoded from outside the videos root."""
    root = tmp_path / "videos"
    shutil.copytree(fixture_dir, root)
    first = read_table(manifest / "videos.parquet", VIDEOS).to_pylist()[1]["relpath"]
    shutil.copy(root / first, tmp_path / "escape.mp4")
    bad = tampered_manifest(manifest, tmp_path, relpath="../escape.mp4")
    with pytest.raises(UnsafeValueError, match=r"row 1: relpath '\.\./escape\.mp4' has '\.\.'"):
        decode_stage.run(DecodeParams(), bad, root, tmp_path / "store.zarr", tmp_path / "decode", scheduler="sync")
    assert not (tmp_path / "store.zarr" / "frames").exists() or not any((tmp_path / "store.zarr" / "frames").iterdir())


def test_removing_an_array_refuses_a_name_that_is_not_one_component(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    with pytest.raises(UnsafeValueError):
        store.remove_array(tmp_path / "store.zarr", "frames", "../../victim")
    assert victim.is_dir()


def test_a_clip_index_with_an_unsafe_id_is_refused(tmp_path):
    table = pa.table({"video_id": ["ok-00000000", "../x"], "start": [0, 0], "clip_len": [8, 8], "stride": [4, 4],
                      "selected": [True, True]})  # fmt: skip
    import pyarrow.parquet as pq

    pq.write_table(table, tmp_path / "clips.parquet")
    with pytest.raises(UnsafeValueError, match=r"clips.parquet, row 1: video_id '\.\./x'"):
        ClipIndex.load(tmp_path / "clips.parquet")


def test_a_split_list_entry_outside_the_root_is_refused_with_its_line(tmp_path):
    (tmp_path / "classInd.txt").write_text("1 Walk\n")
    (tmp_path / "trainlist01.txt").write_text("Walk/v_a.avi 1\n../../../etc/passwd 1\n")
    (tmp_path / "testlist01.txt").write_text("Walk/v_b.avi\n")
    with pytest.raises(UnsafeValueError, match=r"trainlist01.txt:2: relpath '\.\./\.\./\.\./etc/passwd'"):
        read_labels(tmp_path)


def test_without_follow_symlinks_no_symlink_is_read_and_each_is_listed(fixture_dir, tmp_path):
    """Before: a symlinked file was probed anyway, and a symlinked folder skipped without a word."""
    root, elsewhere = tmp_path / "videos", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    real = sorted(fixture_dir.glob("*.mp4"))[0]
    shutil.copy(real, root / "real.mp4")
    shutil.copy(real, elsewhere / "outside.mp4")
    os.symlink(elsewhere / "outside.mp4", root / "linked.mp4")
    os.symlink(elsewhere, root / "linked_folder")
    scan = scan_videos(root, [".mp4"], follow_symlinks=False)
    assert [v.relpath for v in scan.videos] == ["real.mp4"]
    assert sorted(rel for rel, _ in scan.skipped) == ["linked.mp4", "linked_folder"]
    followed = scan_videos(root, [".mp4"], follow_symlinks=True)
    assert [v.relpath for v in followed.videos] == ["linked.mp4", "linked_folder/outside.mp4", "real.mp4"]
    summary = probe_stage.run(ProbeParams(follow_symlinks=False), root, tmp_path / "manifest", scheduler="sync")
    assert any("linked_folder" in note for note in summary.notes) and any("linked.mp4" in note for note in summary.notes)


def test_every_torch_load_in_the_code_refuses_pickles():
    """No file is ever unpickled: every torch.load passes weights_only=True (checked on the source)."""
    calls = []
    for path in [*REPO.glob("pipeline/**/*.py"), *REPO.glob("stages/*.py"), *REPO.glob("tools/*.py"), REPO / "cli.py",
                 *REPO.glob("bench/*.py")]:  # fmt: skip
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":  # fmt: skip
                keywords = {k.arg: k.value for k in node.keywords}
                ok = isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True
                calls.append((f"{path.relative_to(REPO)}:{node.lineno}", ok))
    assert calls and all(ok for _, ok in calls), [where for where, ok in calls if not ok]
    assert any(where.startswith("pipeline/flow/") for where, _ in calls)  # the subpackages are searched (RAFT's weights)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_model_file_carrying_a_pickled_object_is_refused(tmp_path, monkeypatch):
    from stages import evaluate

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "model.pt"
    torch.save({"model": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        evaluate.load_encoder(Params(), path)
    assert not (tmp_path / "pwned").exists()
