"""The make_demo stage: a deterministic, labelled dataset whose ground truth describes its videos."""

import numpy as np
import pytest

from conftest import tree_bytes
from pipeline.data import synth
from pipeline.storage.tables import read_table, table_metadata
from schemas.params import MakeDemoParams
from schemas.tables import DEMO_LABELS
from stages import make_demo

TINY = MakeDemoParams(classes=["slide_horizontal", "rotate", "zoom_in"], videos_per_class=2, frames=10, width=64, height=48)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    summary = make_demo.run(TINY, out, scheduler="sync")
    return out, summary


def test_layout_and_labels(demo):
    out, summary = demo
    labels = read_table(out / "labels.parquet", DEMO_LABELS).to_pylist()
    assert [row["relpath"] for row in labels] == sorted(
        f"{c}/{c}_{k:03d}.mp4" for c in TINY.classes for k in range(2)
    )
    assert {row["label"]: row["label_index"] for row in labels} == {"slide_horizontal": 0, "rotate": 1, "zoom_in": 2}
    for row in labels:
        assert (out / "videos" / row["relpath"]).stat().st_size > 1000
        truth = synth.SceneTruth.load(out / row["truth"])
        assert (truth.label, truth.num_frames, truth.width, truth.height) == (row["label"], 10, 64, 48)
    assert table_metadata(out / "labels.parquet")["params"]["videos_per_class"] == 2
    assert summary.counts["videos"] == 6
    assert sorted(p.name for p in out.parent.iterdir()) == ["demo"]  # no temporary folder left behind


def test_same_params_give_identical_tree_bytes(demo, tmp_path):
    out, _ = demo
    make_demo.run(TINY, tmp_path / "again", scheduler="sync")
    assert tree_bytes(tmp_path / "again") == tree_bytes(out)


def test_another_seed_gives_other_videos(demo, tmp_path):
    out, _ = demo
    make_demo.run(TINY.model_copy(update={"seed": 1}), tmp_path / "other", scheduler="sync")
    assert tree_bytes(tmp_path / "other")["videos/rotate/rotate_000.mp4"] != tree_bytes(out)["videos/rotate/rotate_000.mp4"]


def test_camera_motion_fraction_is_respected():
    plan = make_demo.plan(MakeDemoParams(videos_per_class=40, camera_motion_fraction=0.25), "/tmp/x")
    share = np.mean([item.camera_motion for item in plan])
    assert 0.15 < share < 0.35
    assert not any(item.camera_motion for item in make_demo.plan(MakeDemoParams(camera_motion_fraction=0.0), "/tmp/x"))
    assert len({item.seed for item in plan}) == len(plan)


def test_appearance_does_not_depend_on_the_class():
    """Mean colour and texture contrast of first frames are alike across classes (the class is motion)."""
    stats = {}
    for label in ("slide_horizontal", "rotate", "zoom_out"):
        frames = [next(synth.render_frames(synth.demo_scene(label, seed, width=64, height=48, frames=2, fps=25, camera_motion=False)))
                  for seed in range(12)]  # fmt: skip
        stats[label] = (np.mean([f.mean() for f in frames]), np.mean([f.std() for f in frames]))
    means = np.array(list(stats.values()))
    assert np.ptp(means[:, 0]) < 12 and np.ptp(means[:, 1]) < 8


def test_flip_exchanged_classes_are_named_in_the_summary(tmp_path):
    params = MakeDemoParams(classes=["slide_left", "slide_right", "rotate_cw", "orbit"], videos_per_class=1, frames=4, width=32, height=24)
    assert params.flip_exchanged() == [("slide_left", "slide_right")]
    summary = make_demo.run(params, tmp_path / "demo", scheduler="sync")
    assert any("slide_left into slide_right: train with dataset.flip: 0" in note for note in summary.notes)
    assert MakeDemoParams(classes=["orbit", "bounce"]).flip_exchanged() == []
    with pytest.raises(ValueError, match="0 <= low <= high"):
        MakeDemoParams(object_size=(0.3, 0.1))
