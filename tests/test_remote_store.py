"""Writing the store at an fsspec URL (memory:// here; S3 in tests/test_cluster.py): an array is
visible only once its zarr.json, written last, is there; what a killed writer leaves is swept; the
lock is a lease object that names its holder, is taken over once it has ended, and fences a run
that lost it; a URL store is refused where a local one would be; damaged arrays are rewritten."""

import contextlib
import json
import shutil
import time
import uuid

import fsspec
import numpy as np
import pytest

from conftest import tree_bytes
from pipeline.storage import locks, ownership, store
from schemas import store as layout
from schemas.errors import MissingInputError
from schemas.params import DecodeParams, FlowParams, ProbeParams
from stages import decode as decode_stage
from stages import flow as flow_stage
from stages import probe as probe_stage

MEMORY = fsspec.filesystem("memory")
FRAMES = np.random.default_rng(0).integers(0, 256, (20, 16, 24, 3), dtype=np.uint8)
SHAPE = {"height": 16, "width": 24, "chunk_frames": 8, "shard_frames": 8}


@pytest.fixture
def url():
    """A fresh store URL in this process's memory filesystem."""
    prefix = f"memory://t-{uuid.uuid4().hex[:8]}"
    yield f"{prefix}/store.zarr"
    with contextlib.suppress(FileNotFoundError):  # nothing left to remove
        MEMORY.rm(prefix.removeprefix("memory://"), recursive=True)


def keys(url: str) -> list[str]:
    root = url.removeprefix("memory:/")
    return sorted(key[len(root) + 1 :] for key in MEMORY.find(root))


def test_an_array_at_a_url_is_invisible_until_its_zarr_json_is_written_last(url, tmp_path):
    seen = []

    def blocks():
        for start in range(0, 20, 8):
            yield FRAMES[start : start + 8]
            # Shards are already in place, the array is not: no reader opens it, no listing names it.
            seen.append((sorted(k for k in keys(url) if k.startswith("frames/v/")), store.finished_arrays(url, "frames")))
            with pytest.raises(MissingInputError):
                store.open_frames(url, "v")

    store.write_frames(url, "v", blocks(), attrs={"a": 1}, **SHAPE)
    assert seen[0][0] == ["frames/v/c/0/0/0/0"] and seen[-1][0] == ["frames/v/c/0/0/0/0", "frames/v/c/1/0/0/0"]
    assert all(finished == [] for _, finished in seen)
    assert store.finished_arrays(url, "frames") == ["v"] and np.array_equal(store.open_frames(url, "v")[:], FRAMES)
    store.write_frames(tmp_path / "store.zarr", "v", [FRAMES], attrs={"a": 1}, **SHAPE)
    local = tree_bytes(tmp_path / "store.zarr/frames/v")
    assert local == {k.removeprefix("frames/v/"): MEMORY.cat_file(f"{url.removeprefix('memory:/')}/{k}")
                     for k in keys(url) if k.startswith("frames/v/")}  # fmt: skip
    assert not MEMORY.find(f"{url.removeprefix('memory:/')}{layout.PARTIAL_SUFFIX}")  # nothing held aside


def test_a_rewrite_hides_the_old_array_first_and_a_killed_writer_leaves_what_the_next_start_sweeps(url):
    store.write_frames(url, "old", [FRAMES], attrs={}, **SHAPE)
    store.write_frames(url, "kept", [FRAMES], attrs={}, **SHAPE)
    held = store.create_partial(url, "frames", "old", shape=(16, 16, 24, 3), dtype="uint8", chunks=(8, 16, 24, 3),
                                shards=(8, 16, 24, 3), axes=layout.FRAMES_AXES)  # fmt: skip
    assert store.finished_arrays(url, "frames") == ["kept"]  # the old array is gone before the new one is written
    store.open_partial(held)[:8] = FRAMES[:8]  # ... and the writer is killed here: nothing publishes it
    assert "frames/old/c/0/0/0/0" in keys(url) and "frames/old/zarr.json" not in keys(url)
    store.clear_partial(url, "frames")  # the next run's start
    assert [k for k in keys(url) if "old" in k] == [] and store.finished_arrays(url, "frames") == ["kept"]
    assert not MEMORY.find(f"{url.removeprefix('memory:/')}{layout.PARTIAL_SUFFIX}")
    store.remove_array(url, "frames", "kept")
    assert store.finished_arrays(url, "frames") == [] and not [k for k in keys(url) if "kept" in k]


def test_the_lease_names_its_holder_is_taken_over_once_ended_and_fences_the_run_that_lost_it(url):
    with locks.hold(url, "decode") as token:
        assert token and locks.holder(url)["token"] == token
        with pytest.raises(locks.LockedError, match=r"is in use by decode \(host .+, pid \d+, started .+\).+lease ends within \d+ s"):
            with locks.hold(url, "extract-flow"):
                pass
        locks.check_lease(url, token)  # held: no error
    assert locks.holder(url) is None  # released
    # A run that died: its lock object stays, its lease ends, and the next run takes over.
    lock = f"{locks.lock_url(url)}".removeprefix("memory:/")
    MEMORY.pipe_file(lock, json.dumps({"stage": "decode", "host": "gone", "pid": 1, "token": "dead", "lease_ends": time.time() - 1}).encode())
    with locks.hold(url, "extract-flow") as token:
        assert locks.holder(url)["token"] == token
        with pytest.raises(locks.LeaseLost, match="taken over by extract-flow"):
            locks.check_lease(url, "dead")  # the dead run's tasks publish nothing more
        with pytest.raises(locks.LeaseLost):
            store.write_frames(url, "v", [FRAMES], attrs={}, lease="dead", **SHAPE)
        assert store.finished_arrays(url, "frames") == []


def test_the_lease_is_renewed_while_held_through_a_failed_renewal(url, monkeypatch):
    monkeypatch.setenv(locks.LEASE_ENV, "0.9")
    real, failures = MEMORY.pipe_file, []

    def flaky(path, value, **kwargs):  # the first renewal meets a network error
        if "mode" not in kwargs and not failures:
            failures.append(path)
            raise ConnectionError("connection reset")
        return real(path, value, **kwargs)

    monkeypatch.setattr(MEMORY, "pipe_file", flaky)
    with locks.hold(url, "decode") as token:
        first = locks.holder(url)["lease_ends"]
        time.sleep(1.4)
        locks.check_lease(url, token)  # past its first end: renewed after the failed try
        assert failures and locks.holder(url)["lease_ends"] > first


@pytest.mark.parametrize(("where", "protected", "why"), [
    ("s3://bucket", {}, "is a bucket's root"),
    ("s3://bucket/", {}, "is a bucket's root"),
    ("s3://bucket/videos", {"the videos root": "s3://bucket/videos"}, "is the videos root"),
    ("s3://bucket/data", {"the videos root": "s3://bucket/data/videos"}, "holds the videos root"),
])  # fmt: skip
def test_a_store_url_is_refused_where_it_would_be_a_bucket_or_hold_the_videos(where, protected, why):
    with pytest.raises(ownership.StoreRefused, match=why):
        ownership.check_location(where, protected)


def test_a_prefix_holding_other_objects_is_not_taken_for_a_store(url):
    MEMORY.pipe_file(f"{url.removeprefix('memory:/')}/notes.txt", b"the user's")
    with pytest.raises(ownership.StoreRefused, match=r"is not this pipeline's store .+notes.txt.+nothing was written"):
        with ownership.owning(url, "decode", protected={}):
            pass
    assert keys(url) == ["notes.txt"] and locks.holder(url) is None


def test_decode_to_a_url_rewrites_damaged_arrays_and_skips_sound_ones(fixture_dir, tmp_path, url):
    probe_stage.run(ProbeParams(), fixture_dir, tmp_path / "manifest", scheduler="sync")

    def decode(**kwargs):
        return decode_stage.run(DecodeParams(), tmp_path / "manifest", fixture_dir, url, tmp_path / "decode", scheduler="sync", **kwargs)

    decode()
    first = {k: MEMORY.cat_file(f"{url.removeprefix('memory:/')}/{k}") for k in keys(url) if k != "zarr.json"}
    names = store.finished_arrays(url, "frames")
    root = url.removeprefix("memory:/")
    MEMORY.rm_file(f"{root}/frames/{names[0]}/c/0/0/0/0")  # a shard object gone
    shard = f"{root}/frames/{names[1]}/c/0/0/0/0"
    MEMORY.pipe_file(shard, MEMORY.cat_file(shard)[:-100])  # truncated
    summary = decode()
    assert summary.counts["damaged, decoded again"] == 2 and summary.counts["skipped"] == len(names) - 2
    assert {k: MEMORY.cat_file(f"{root}/{k}") for k in keys(url) if k != "zarr.json"} == first


def test_flow_to_a_url_and_its_re_encoding_give_the_bytes_of_local_disk(fixture_flowed, tmp_path, url):
    """The flow stage writes at a URL what it writes locally; a precision change re-encodes the
    stored float16 flow there too (read whole first: in place, the old array goes when the new one
    starts), to the bytes of a fresh run."""
    fs_root = url.removeprefix("memory:/")
    MEMORY.put(str(fixture_flowed / "store.zarr" / "frames"), f"{fs_root}/frames", recursive=True)
    MEMORY.pipe_file(f"{fs_root}/zarr.json", (fixture_flowed / "store.zarr" / "zarr.json").read_bytes())
    fixed = FlowParams(method="dis", precision="1/32")

    def run(store_path, params, out):
        return flow_stage.run(params, fixture_flowed / "decode", store_path, tmp_path / out, scheduler="sync")

    computed = run(url, FlowParams(method="dis"), "remote").counts["computed"]
    recoded = run(url, fixed, "remote")
    assert "computed" not in recoded.counts and recoded.counts["re-encoded"] == computed
    shutil.copytree(fixture_flowed / "store.zarr" / "frames", tmp_path / "store.zarr" / "frames")
    shutil.copy(fixture_flowed / "store.zarr" / "zarr.json", tmp_path / "store.zarr" / "zarr.json")
    run(tmp_path / "store.zarr", fixed, "local")
    local = tree_bytes(tmp_path / "store.zarr" / "flow")
    assert local == {k.removeprefix("flow/"): MEMORY.cat_file(f"{fs_root}/{k}") for k in keys(url) if k.startswith("flow/")}
    assert (tmp_path / "remote" / "arrays.parquet").read_bytes() == (tmp_path / "local" / "arrays.parquet").read_bytes()


def test_chunks_of_fill_values_are_stored_so_an_all_black_video_is_sound(url, tmp_path):
    """Before, zarr.open_array ignored the `write_empty_chunks` config: chunks of zeros were left out
    of local shards, and a shard of nothing else had no file at all, which reads as damage."""
    black = np.zeros((20, 16, 24, 3), np.uint8)
    for where in (tmp_path / "store.zarr", url):
        store.write_frames(where, "black", [black], attrs={}, codec="jpeg", quality=90, **SHAPE)
        assert store.damage(where, "frames", "black") is None and np.array_equal(store.open_frames(where, "black")[:], black)
    local = tree_bytes(tmp_path / "store.zarr/frames/black")
    assert set(local) == {"zarr.json", "c/0/0/0/0", "c/1/0/0/0", "c/2/0/0/0"}
    assert local == {k.removeprefix("frames/black/"): MEMORY.cat_file(f"{url.removeprefix('memory:/')}/{k}")
                     for k in keys(url) if k.startswith("frames/black/")}  # fmt: skip
