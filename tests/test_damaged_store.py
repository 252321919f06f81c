"""A damaged store costs the damaged video only: every stage that reads the store records it with a
reason naming the video, the array and the chunk, and finishes the rest; the training dataset
replaces its clips (or fails, by a setting); a re-run of the producing stage finds the damage and
rewrites the array. Each case here was found by a fault run against the code before it."""

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO
from pipeline.data.dataset import ClipLoader, MSCLClips
from pipeline.models.encoders import exported_module, rgb_backbone
from pipeline.storage import store as stores
from pipeline.storage.tables import read_table
from schemas import store as layout
from schemas.params import DatasetParams, DecodeParams, FlowParams, Params, SampleParams
from stages import decode as decode_stage
from stages import evaluate as evaluate_stage
from stages import flow as flow_stage
from stages import sample as sample_stage

FAST = DatasetParams(crop_size=24, color_jitter_p=0, grayscale_p=0, blur_p=0, epoch="per_clip")


def copy_of(root: Path, tmp: Path) -> Path:
    shutil.copytree(root / "store.zarr", tmp / "store.zarr")
    return tmp / "store.zarr"


def shard(store: Path, group: str, video_id: str, index: int = 0) -> Path:
    files = sorted(p for p in (store / group / video_id / "c").rglob("*") if p.is_file())
    return files[index]


def garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(range(64))  # same size: only a read finds it
    path.write_bytes(bytes(data))


def videos_of(root: Path) -> list[dict]:
    return read_table(root / "decode" / "decoded.parquet").to_pylist()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "deleted", "metadata"])
def test_sample_records_a_damaged_flow_array_and_scores_the_rest(fixture_flowed, tmp_path, damage):
    """Before: a checksum or zstd traceback naming no video, or (deleted) a video scored as still,
    or (metadata of non-UTF-8 bytes) a UnicodeDecodeError."""
    store = copy_of(fixture_flowed, tmp_path)
    victim = videos_of(fixture_flowed)[2]["video_id"]
    group = layout.flow_group("dis")
    target = shard(store, group, victim)
    if damage == "garbage":
        garble(target)
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 3])
    elif damage == "deleted":
        target.unlink()
    else:
        (store / group / victim / "zarr.json").write_bytes(b"\xff\xfe\x00garbage")
    sample_stage.run(SampleParams(), fixture_flowed / "flow", store, tmp_path / "sample", scheduler="sync")
    failures = read_table(tmp_path / "sample" / "failures.parquet").to_pylist()
    assert [f["video_id"] for f in failures] == [victim]
    assert f"video '{victim}', array {group}/{victim}" in failures[0]["detail"]
    assert failures[0]["detail"].endswith("; repair: python cli.py extract-flow --method dis --verify")  # what to run
    clips = read_table(tmp_path / "sample" / "clips.parquet").to_pandas()
    assert victim not in set(clips.video_id) and clips.video_id.nunique() == 4


def test_extract_flow_records_a_damaged_frames_array_and_computes_the_rest(fixture_flowed, tmp_path):
    """Before: a raw traceback naming no video, and no flow for any video."""
    store = copy_of(fixture_flowed, tmp_path)
    shutil.rmtree(store / "flow")
    rows = videos_of(fixture_flowed)
    victim, unreadable = rows[1]["video_id"], rows[3]["video_id"]
    garble(shard(store, layout.FRAMES_GROUP, victim))
    (store / layout.FRAMES_GROUP / unreadable / "zarr.json").write_bytes(b"\xff\xfe\x00")  # before: UnicodeDecodeError
    summary = flow_stage.run(FlowParams(method="dis"), fixture_flowed / "decode", store, tmp_path / "flow", scheduler="sync")
    assert summary.counts["computed"] == 3 and summary.counts["failed"] == 2
    failures = {f["video_id"]: f for f in read_table(tmp_path / "flow" / "failures.parquet").to_pylist()}
    assert set(failures) == {victim, unreadable} and {f["reason"] for f in failures.values()} == {"bad_frames"}
    assert f"array frames/{victim}" in failures[victim]["detail"] and "chunk (" in failures[victim]["detail"]
    assert "re-run the decode stage" in failures[unreadable]["detail"]


def test_a_rerun_of_decode_rewrites_a_damaged_array_and_verify_finds_garbage(fixture_flowed, fixture_dir, tmp_path):
    """Before: the re-run skipped the damaged array because its fingerprint still matched."""
    store = copy_of(fixture_flowed, tmp_path)
    decode = lambda **kw: decode_stage.run(DecodeParams(), fixture_flowed / "manifest", fixture_dir, store,  # noqa: E731
                                           tmp_path / "decode", scheduler="sync", **kw)  # fmt: skip
    rows = videos_of(fixture_flowed)
    missing, garbled = rows[0]["video_id"], rows[3]["video_id"]
    reference = {p.relative_to(store): p.read_bytes() for p in (store / "frames").rglob("*") if p.is_file()}
    shard(store, layout.FRAMES_GROUP, missing).unlink()
    garble(shard(store, layout.FRAMES_GROUP, garbled))
    first = decode()
    assert first.counts["damaged, decoded again"] == 1 and first.counts["skipped"] == 4  # the garbage needs --verify
    second = decode(verify=True)
    assert second.counts["damaged, decoded again"] == 1 and second.counts["skipped"] == 4
    assert decode(verify=True).counts["skipped"] == 5
    after = {p.relative_to(store): p.read_bytes() for p in (store / "frames").rglob("*") if p.is_file()}
    assert after == reference  # rewritten to exactly what it was


def test_a_rerun_of_extract_flow_rewrites_a_damaged_flow_array(fixture_flowed, tmp_path):
    store = copy_of(fixture_flowed, tmp_path)
    rows = videos_of(fixture_flowed)
    group = layout.flow_group("dis")
    (store / group / rows[0]["video_id"] / "zarr.json").write_bytes(b"\xff\xfe")
    shard(store, group, rows[1]["video_id"]).unlink()
    summary = flow_stage.run(FlowParams(method="dis"), fixture_flowed / "decode", store, tmp_path / "flow", scheduler="sync")
    assert summary.counts["computed"] == 2 and summary.counts["skipped"] == 3
    garble(shard(store, group, rows[4]["video_id"]))
    verified = flow_stage.run(FlowParams(method="dis"), fixture_flowed / "decode", store, tmp_path / "flow", scheduler="sync",
                              verify=True)  # fmt: skip
    assert verified.counts["damaged"] == 1 and verified.counts["computed"] == 1
    for row in rows:
        stores.open_flow(store, "dis", row["video_id"])[:]  # every array reads again


@pytest.mark.parametrize("group", [layout.FRAMES_GROUP, layout.flow_group("dis")])
def test_a_plain_rerun_finds_a_truncated_shard_by_its_index_and_rewrites_it(fixture_flowed, fixture_dir, tmp_path, group):
    """Before: a shard cut to 1,000 bytes was kept by a plain re-run (the file was there); only
    --verify rewrote it. Its index, the file's last bytes, is gone, which one small read shows."""
    store = copy_of(fixture_flowed, tmp_path)
    victim = videos_of(fixture_flowed)[2]["video_id"]
    reference = {p.relative_to(store): p.read_bytes() for p in (store / group).rglob("*") if p.is_file()}
    target = shard(store, group, victim)
    target.write_bytes(target.read_bytes()[:1000])
    problem = stores.damage(store, group, victim)
    assert "its index (the file's last" in problem and "fails its checksum: truncated or overwritten" in problem
    if group == layout.FRAMES_GROUP:
        summary = decode_stage.run(DecodeParams(), fixture_flowed / "manifest", fixture_dir, store, tmp_path / "decode", scheduler="sync")
        assert summary.counts["damaged, decoded again"] == 1 and summary.counts["skipped"] == 4
    else:
        summary = flow_stage.run(FlowParams(method="dis"), fixture_flowed / "decode", store, tmp_path / "flow", scheduler="sync")
        assert summary.counts["damaged"] == 1 and summary.counts["computed"] == 1 and summary.counts["skipped"] == 4
    assert {p.relative_to(store): p.read_bytes() for p in (store / group).rglob("*") if p.is_file()} == reference


@pytest.fixture
def damaged_index(fixture_flowed, tmp_path):
    store = copy_of(fixture_flowed, tmp_path)
    sample_stage.run(SampleParams(), fixture_flowed / "flow", store, tmp_path / "sample", scheduler="sync")
    clips = read_table(tmp_path / "sample" / "clips.parquet").to_pandas()
    victim = clips[clips.selected].video_id.iloc[0]
    for path in sorted(p for p in (store / layout.flow_group("dis") / victim / "c").rglob("*") if p.is_file()):
        garble(path)
    return tmp_path / "sample" / "clips.parquet", store, victim


def test_the_dataset_replaces_damaged_clips_keeps_its_length_and_counts_them(damaged_index, caplog):
    index, store, victim = damaged_index
    dataset = MSCLClips(index, store, "dis", FAST)
    with caplog.at_level(logging.WARNING, logger="pipeline.data.dataset"):
        batches = list(ClipLoader(dataset, 4))
    samples = [vid for batch in batches for vid in batch["video_id"]]
    assert len(samples) == dataset.epoch_length and victim not in samples
    assert dataset.damaged_clips == int((dataset.index.video_ids == victim).sum()) > 0
    replaced = torch.cat([batch["padding"] for batch in batches])
    assert int(replaced.sum()) == dataset.damaged_clips
    warnings = [r for r in caplog.records if "damaged" in r.getMessage()]
    assert len(warnings) == 1 and f"video '{victim}'" in warnings[0].getMessage()
    assert "repair: python cli.py extract-flow --method dis --verify" in warnings[0].getMessage()


def test_the_dataset_fails_on_a_damaged_clip_when_told_naming_video_array_and_chunk(damaged_index):
    index, store, victim = damaged_index
    dataset = MSCLClips(index, store, "dis", FAST.model_copy(update={"on_damaged": "fail"}))
    with pytest.raises(stores.CorruptChunkError, match=rf"video '{victim}', array flow/dis/{victim}, frames .*chunk \("):
        list(ClipLoader(dataset, 4))


def test_evaluate_leaves_out_a_damaged_video_and_records_it(demo_sampled, tmp_path):
    store = copy_of(demo_sampled, tmp_path)
    rows = videos_of(demo_sampled)
    frames_victim, flow_victim = rows[0]["video_id"], rows[5]["video_id"]
    garble(shard(store, layout.FRAMES_GROUP, frames_victim))
    shard(store, layout.flow_group("dis"), flow_victim).unlink()
    params = Params().model_copy(update={"flow": FlowParams(method="dis"), "dataset": DatasetParams(crop_size=32)})
    t = params.train
    for method in ("mscl", "rgb_only"):
        (tmp_path / "train" / method).mkdir(parents=True)
        torch.save(exported_module(rgb_backbone(t.encoder, t.width, tuple(t.blocks))).state_dict(),
                   tmp_path / "train" / method / "rgb_encoder.pt")  # fmt: skip
    summary = evaluate_stage.run(params, tmp_path / "train", demo_sampled / "demo" / "labels.parquet", demo_sampled / "decode",
                                 store, tmp_path / "eval")  # fmt: skip
    assert summary.counts["videos left out (damaged in the store)"] == 1
    failures = read_table(tmp_path / "eval" / "failures.parquet").to_pylist()
    assert [(f["video_id"], f["reason"]) for f in failures] == sorted([(frames_victim, "bad_frames"), (flow_victim, "bad_flow")])
    detail = failures[[f["video_id"] for f in failures].index(frames_victim)]["detail"]
    assert f"array frames/{frames_victim}" in detail and detail.endswith("; repair: python cli.py decode --verify")
    assert (tmp_path / "eval" / "metrics.json").is_file()


def test_show_flow_on_a_damaged_array_prints_one_line(fixture_flowed, tmp_path):
    store = copy_of(fixture_flowed, tmp_path)
    victim = videos_of(fixture_flowed)[0]["video_id"]
    for path in sorted(p for p in (store / "frames" / victim / "c").rglob("*") if p.is_file()):
        garble(path)
    result = subprocess.run([sys.executable, "cli.py", "show-flow", victim, "--method", "dis", "--store", str(store),
                             "--out", str(tmp_path / "flow.png")], cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: video '{victim}', array frames/{victim}")
