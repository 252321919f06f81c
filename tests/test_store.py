"""pipeline/storage/store.py: atomic array writes, shard regrouping, attributes."""

import numpy as np
import pytest

from pipeline.storage import store
from schemas import store as layout


def blocks(total: int, size: int, shape=(6, 5, 3), fail_after: int | None = None):
    frames = np.arange(total * np.prod(shape), dtype=np.int64).reshape(total, *shape) % 251
    for start in range(0, total, size):
        if fail_after is not None and start >= fail_after:
            raise OSError("disk on fire")
        yield frames[start : start + size].astype(np.uint8)


def test_write_frames_regroups_into_shards_and_records_attrs(tmp_path):
    count = store.write_frames(tmp_path, "v", blocks(45, 7), height=6, width=5, chunk_frames=4, shard_frames=16, attrs={"a": 1})
    assert count == 45
    array = store.open_frames(tmp_path, "v")
    assert array.shape == (45, 6, 5, 3) and array.dtype == np.uint8
    assert array.chunks == (4, 6, 5, 3) and array.shards == (16, 6, 5, 3)
    np.testing.assert_array_equal(array[:], np.concatenate(list(blocks(45, 7))))
    assert store.array_attrs(tmp_path, layout.FRAMES_GROUP, "v") == {"a": 1, "num_frames": 45}
    shard_files = [p for p in (tmp_path / "frames" / "v").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(shard_files) == 3  # 45 frames in shards of 16: few files for DVC to hash
    assert store.finished_arrays(tmp_path, layout.FRAMES_GROUP) == ["v"]


def test_a_failure_mid_write_leaves_no_array_and_keeps_the_old_one(tmp_path):
    store.write_frames(tmp_path, "v", blocks(10, 5), height=6, width=5, chunk_frames=5, shard_frames=5, attrs={"old": True})
    with pytest.raises(OSError, match="disk on fire"):
        store.write_frames(tmp_path, "v", blocks(40, 5, fail_after=20), height=6, width=5, chunk_frames=5, shard_frames=5, attrs={})
    with pytest.raises(OSError):
        store.write_frames(tmp_path, "w", blocks(40, 5, fail_after=20), height=6, width=5, chunk_frames=5, shard_frames=5, attrs={})
    assert store.finished_arrays(tmp_path, layout.FRAMES_GROUP) == ["v"]
    assert store.array_attrs(tmp_path, layout.FRAMES_GROUP, "v") == {"old": True, "num_frames": 10}
    assert not any((store.partial_root(tmp_path) / "frames").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "zarr.json"]  # work in progress stays outside


def test_wrong_frame_shape_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="expected"):
        store.write_frames(tmp_path, "v", blocks(4, 2, shape=(6, 4, 3)), height=6, width=5, chunk_frames=2, shard_frames=2, attrs={})


def test_open_missing_array_says_which_stage_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the decode stage"):
        store.open_frames(tmp_path, "nope")
