"""The store on S3: the sample stage and the training dataset read it through fsspec from a moto
server on 127.0.0.1 and give exactly what the local folder gives; damage there is named as locally;
the credentials, read from the environment (or fsspec's configuration), are never written or logged."""

import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import s3fs
import torch
from moto import server as moto_server

from pipeline.data.dataset import ClipLoader, MSCLClips
from pipeline.storage import store
from pipeline.storage.tables import read_table, table_metadata
from schemas import store as layout
from schemas.params import DatasetParams, SampleParams
from schemas.tables import FAILURES, FLOWED
from stages import sample as sample_stage

BUCKET = "mscl-test"
KEY_ID = "MSCLTESTKEYID"
SECRET = "mscl-test-secret-8c1f0e6d2b"  # must show up nowhere but in the environment
TABLES = ("frames.parquet", "clips.parquet", "failures.parquet")
FAST = DatasetParams(crop_size=24, color_jitter_p=0, grayscale_p=0, blur_p=0, epoch="per_clip")


def _fresh_filesystems():
    """Drop cached s3fs instances: one made under other settings must not be reused."""
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def s3(fixture_flowed, tmp_path_factory):
    """A moto S3 server on 127.0.0.1 holding the fixture's store as s3://BUCKET/store.zarr and the
    same store with JPEG-coded frames (the mscl.image codec) as s3://BUCKET/jpeg.zarr. Credentials
    and endpoint are set only in the environment. Yields (s3fs filesystem, local stores by name)."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    jpeg = _jpeg_copy(fixture_flowed / "store.zarr", tmp_path_factory.mktemp("jpeg") / "jpeg.zarr")
    no_file = str(tmp_path_factory.mktemp("aws") / "none")
    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_DEFAULT_PROFILE"):
            env.delenv(name, raising=False)
        env.setenv("AWS_CONFIG_FILE", no_file)  # nothing from the machine's ~/.aws
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", no_file)
        env.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
        env.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_ENDPOINT_URL_S3", f"http://{host}:{port}")  # botocore's own setting; s3fs honours it
        _fresh_filesystems()
        fs = s3fs.S3FileSystem()
        fs.mkdir(BUCKET)
        local = {"store.zarr": fixture_flowed / "store.zarr", "jpeg.zarr": jpeg}
        for name, path in local.items():
            fs.put(str(path), f"{BUCKET}/{name}", recursive=True)
        assert fs.exists(f"{BUCKET}/store.zarr/zarr.json") and fs.exists(f"{BUCKET}/jpeg.zarr/frames/zarr.json")
        yield fs, local
        _fresh_filesystems()
    server.stop()


def _jpeg_copy(source, target):
    """The store with its frames stored as JPEG (4:4:4, 8 frames a chunk), its flow as it is."""
    for video_id in store.finished_arrays(source, layout.FRAMES_GROUP):
        frames = store.open_frames(source, video_id)
        attrs = {k: v for k, v in frames.attrs.items() if k != "num_frames"}
        store.write_frames(target, video_id, [frames[:]], height=frames.shape[1], width=frames.shape[2], chunk_frames=8,
                           shard_frames=256, attrs=attrs, codec="jpeg", quality=90)  # fmt: skip
    shutil.copytree(source / "flow", target / "flow", dirs_exist_ok=True)
    return target


@pytest.fixture(scope="module")
def sampled(s3, fixture_flowed, tmp_path_factory):
    """The sample stage's tables from the local store and from s3://BUCKET/store.zarr."""
    out = tmp_path_factory.mktemp("sampled")
    for where, store_path in (("local", fixture_flowed / "store.zarr"), ("s3", f"s3://{BUCKET}/store.zarr")):
        summary = sample_stage.run(SampleParams(), fixture_flowed / "flow", store_path, out / where, scheduler="sync")
        assert summary.counts["videos scored now"] == 5 and summary.counts["videos without clips"] == 0
    return out


def run_epoch(dataset, batch_size=4, num_workers=0, batches=None):
    out = []
    for batch in ClipLoader(dataset, batch_size, num_workers=num_workers):
        out.append(batch)
        if len(out) == batches:
            break
    return out


def same_batches(a, b):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]) if torch.is_tensor(x[key]) else x[key] == y[key], key


def test_the_sample_stage_on_s3_writes_the_same_tables_as_on_the_local_store(sampled):
    for name in TABLES:
        local, remote = sampled / "local" / name, sampled / "s3" / name
        assert read_table(local).equals(read_table(remote)) and table_metadata(local) == table_metadata(remote), name
        assert local.read_bytes() == remote.read_bytes(), name  # the stage's tables are byte-identical anyway


def test_the_sample_command_takes_an_s3_store_from_params_or_its_option(s3, fixture_flowed, tmp_path):
    import yaml
    from typer.testing import CliRunner

    import cli

    raw = yaml.safe_load((Path(cli.__file__).parent / "params.yaml").read_text())
    raw["data"].update(flow=str(fixture_flowed / "flow"), sample=str(tmp_path / "local"))

    def sample(store, *args):
        (tmp_path / "params.yaml").write_text(yaml.safe_dump({**raw, "data": {**raw["data"], "store": str(store)}}))
        command = ["sample", "--params", str(tmp_path / "params.yaml"), "--scheduler", "sync", *args]
        result = CliRunner().invoke(cli.app, command)
        assert result.exit_code == 0, result.output
        assert SECRET not in result.output

    sample(fixture_flowed / "store.zarr")
    sample(f"s3://{BUCKET}/store.zarr", "--out", str(tmp_path / "params"))  # data.store: s3://...
    # --store takes a URL too (as a Path it would have become s3:/bucket/...)
    sample(fixture_flowed / "store.zarr", "--store", f"s3://{BUCKET}/store.zarr/", "--out", str(tmp_path / "option"))
    for name in TABLES:
        local = (tmp_path / "local" / name).read_bytes()
        assert (tmp_path / "params" / name).read_bytes() == local == (tmp_path / "option" / name).read_bytes(), name


def test_array_metadata_reads_the_same_from_s3(s3):
    _, local = s3
    video_id = store.finished_arrays(local["store.zarr"], layout.FRAMES_GROUP)[0]
    url = f"s3://{BUCKET}/store.zarr"
    for group in (layout.FRAMES_GROUP, layout.flow_group("dis")):
        assert store.array_meta(url, group, video_id) == store.array_meta(local["store.zarr"], group, video_id)
    assert store.array_attrs(f"s3://{BUCKET}/store.zarr", layout.FRAMES_GROUP, "nope") is None
    with pytest.raises(FileNotFoundError, match=r"no frames array for video 'nope' in s3://.*run the decode stage"):
        store.open_frames(f"s3://{BUCKET}/store.zarr", "nope")


@pytest.mark.parametrize("name", ["store.zarr", "jpeg.zarr"])
def test_the_dataset_on_s3_gives_the_same_batches_as_the_local_folder(s3, sampled, name):
    """zstd frames and JPEG frames (the mscl.image codec), with fixed-point flow; in the main
    process and in two DataLoader workers."""
    _, local = s3
    index = sampled / "s3" / "clips.parquet"
    expected = run_epoch(MSCLClips(index, local[name], "dis", FAST))
    if name == "store.zarr":
        same_batches(expected, run_epoch(MSCLClips(index, f"s3://{BUCKET}/{name}", "dis", FAST)))
    same_batches(expected, run_epoch(MSCLClips(index, f"s3://{BUCKET}/{name}/", "dis", FAST), num_workers=2))


def test_the_endpoint_may_come_from_fsspec_config_instead(s3, monkeypatch):
    import fsspec.config

    _, local = s3
    endpoint = os.environ["AWS_ENDPOINT_URL_S3"]
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
    _fresh_filesystems()
    try:
        video_id = store.finished_arrays(local["store.zarr"], layout.FRAMES_GROUP)[0]
        remote = store.open_flow(f"s3://{BUCKET}/store.zarr", "dis", video_id)
        assert np.array_equal(remote[:], store.open_flow(local["store.zarr"], "dis", video_id)[:])
    finally:
        _fresh_filesystems()


def _broken_copy(fs, local, name, video_id, damage):
    """s3://BUCKET/<name>: the fixture store with `video_id`'s flow shard damaged ("missing" or "flipped")."""
    fs.put(str(local), f"{BUCKET}/{name}", recursive=True)
    shard = f"{BUCKET}/{name}/{layout.flow_group('dis')}/{video_id}/c/0/0/0/0"
    if damage == "missing":
        fs.rm(shard)
    else:
        data = fs.cat(shard)
        middle = len(data) // 3
        fs.pipe(shard, data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :])
    return f"s3://{BUCKET}/{name}"


@pytest.mark.parametrize("damage", ["missing", "flipped"])
def test_a_damaged_shard_on_s3_is_a_corrupt_chunk_error_naming_the_video(s3, sampled, fixture_flowed, tmp_path, damage):
    fs, local = s3
    rows = read_table(fixture_flowed / "flow" / "videos.parquet", FLOWED).to_pylist()
    bad = rows[0]["video_id"]
    url = _broken_copy(fs, local["store.zarr"], f"broken-{damage}.zarr", bad, damage)
    if damage == "missing":
        wanted = rf"video '{bad}', array flow/dis/{bad}, frames 0-\d+: shard file c/0/0/0/0 is missing"
    else:
        wanted = rf"video '{bad}', array flow/dis/{bad}, frames? \d+(-\d+)?, chunk \(\d+, 0, 0, 0\): does not decode"
    with pytest.raises(store.CorruptChunkError, match=wanted):
        store.open_flow(url, "dis", bad)[:]
    dataset = MSCLClips(sampled / "local" / "clips.parquet", url, "dis", FAST)
    items, errors = np.flatnonzero(dataset.index.video_ids == bad), []
    for item in items:  # every clip of the video without its shard fails, with a flipped byte those that read it
        try:
            dataset.sample(int(item))
        except store.CorruptChunkError as exc:
            errors.append(str(exc))
    assert errors and all(re.search(wanted, message) for message in errors), errors
    assert len(errors) == len(items) or damage == "flipped"
    # The sample stage reports the video as bad flow and scores the others.
    sample_stage.run(SampleParams(), fixture_flowed / "flow", url, tmp_path / "sample", scheduler="sync")
    failures = read_table(tmp_path / "sample" / "failures.parquet", FAILURES).to_pylist()
    assert [(row["video_id"], row["reason"]) for row in failures] == [(bad, "bad_flow")]
    assert re.search(wanted, failures[0]["detail"]), failures[0]["detail"]


def test_the_secret_key_is_never_written_or_logged(s3, fixture_flowed, tmp_path, caplog, capfd):
    fs, _ = s3
    caplog.set_level(logging.DEBUG)  # every logger, botocore's and s3fs's included, at its most verbose
    url = f"s3://{BUCKET}/store.zarr"
    sample_stage.run(SampleParams(), fixture_flowed / "flow", url, tmp_path / "sample", scheduler="sync")
    assert len(run_epoch(MSCLClips(tmp_path / "sample" / "clips.parquet", url, "dis", FAST), batches=2)) == 2
    written = [path for path in (tmp_path / "sample").rglob("*") if path.is_file()]
    assert sorted(p.name for p in written) == sorted(TABLES)
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path
        assert SECRET not in repr(table_metadata(path)), path
    for meta in fs.glob(f"{BUCKET}/store.zarr/**/zarr.json"):  # every array's and group's attributes
        assert SECRET.encode() not in fs.cat(meta), meta
    logged = caplog.text + "".join(map(str, (r.args for r in caplog.records)))
    assert caplog.records and SECRET not in logged
    out, err = capfd.readouterr()
    assert SECRET not in out + err
