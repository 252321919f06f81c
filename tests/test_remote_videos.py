"""pipeline/io/sources.py, and the probe, decode and flow stages reading the videos from an fsspec URL
(memory://, and S3 on a moto server on 127.0.0.1): the same manifest, failures and frames as from a
local folder; FFmpeg reads S3 objects by presigned URL; no secret reaches a table, a detail or a log."""

import logging
import os
import shutil
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import s3fs
from moto import server as moto_server

from conftest import FIXTURE_VIDEOS, store_bytes, tree_bytes
from pipeline.io import sources
from pipeline.io.decode import DecodeError, DecodeSpec
from pipeline.io.scan import scan_videos, video_id
from pipeline.storage.tables import read_table, table_metadata, write_table
from schemas.errors import MissingInputError
from schemas.params import DecodeParams, ProbeParams
from schemas.tables import DECODED, FAILURES, VIDEOS
from stages import decode as decode_stage
from stages import flow as flow_stage
from stages import probe as probe_stage

BUCKET = "mscl-videos"
KEY_ID = "MSCLVIDEOSKEYID"
SECRET = "mscl-videos-secret-5e2a9c41"  # must show up nowhere but in the environment


def _good_tree(fixture_dir: Path, root: Path) -> Path:
    """The fixture's five videos, and one more in a folder with a space, its extension upper case."""
    for name in FIXTURE_VIDEOS:
        shutil.copy(fixture_dir / name, root / name)
    (root / "with spaces").mkdir()
    shutil.copy(fixture_dir / "static_shot.mp4", root / "with spaces" / "clip one.MP4")
    (root / "notes.txt").write_text("not a video")
    return root


@pytest.fixture(scope="module")
def local(fixture_dir, tmp_path_factory) -> dict[str, Path]:
    """Two local videos roots, "good" and "bad" (the good videos and three the probe refuses), each
    probed and decoded: manifest/, store.zarr/ and decode/ under local[name + "_out"]."""
    good = _good_tree(fixture_dir, tmp_path_factory.mktemp("good"))
    bad = _good_tree(fixture_dir, tmp_path_factory.mktemp("bad"))
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "random_bytes.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    static = (fixture_dir / "static_shot.mp4").read_bytes()
    (bad / "truncated.mp4").write_bytes(static[: len(static) // 3])
    found = {"good": good, "bad": bad}
    for name, root in list(found.items()):
        out = tmp_path_factory.mktemp(f"{name}_out")
        _probe_and_decode(root, out)
        found[f"{name}_out"] = out
    return found


def _probe_and_decode(root, out: Path):
    probe = probe_stage.run(ProbeParams(), root, out / "manifest", scheduler="sync")
    decode = decode_stage.run(DecodeParams(), out / "manifest", root, out / "store.zarr", out / "decode", scheduler="sync")
    return probe, decode


def _upload(fs, root: Path, url: str) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            fs.pipe_file(sources.join(url, path.relative_to(root).as_posix()), path.read_bytes())


def _rows(path: Path, schema) -> list[dict]:
    return read_table(path, schema).to_pylist()


def _same_outputs(local_out: Path, remote_out: Path) -> None:
    """The manifest, its failures, the decode tables and the frames are what the local root gave."""
    for table, schema in (("manifest/videos.parquet", VIDEOS), ("manifest/failures.parquet", FAILURES),
                          ("decode/decoded.parquet", DECODED), ("decode/failures.parquet", FAILURES)):  # fmt: skip
        assert _rows(remote_out / table, schema) == _rows(local_out / table, schema), table
    assert store_bytes(remote_out / "store.zarr") == store_bytes(local_out / "store.zarr")


# -- the library ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("http://h:9000/b/v.mp4?X-Amz-Algorithm=AWS4&X-Amz-Credential=KEY%2F2024&X-Amz-Signature=abc: Invalid data",
         "http://h:9000/b/v.mp4?<redacted>: Invalid data"),
        ("'https://b.s3.amazonaws.com/v.mp4?AWSAccessKeyId=KEY&Signature=x%2By&Expires=1'", "'https://b.s3.amazonaws.com/v.mp4?<redacted>'"),
        ("s3://KEY:SECRET@bucket/videos", "s3://<redacted>@bucket/videos"),
        ("ftp://user:pw@host/v.mp4 and https://u:p@host/x?sig=s", "ftp://<redacted>@host/v.mp4 and https://<redacted>@host/x?<redacted>"),
        ("a request with X-Amz-Signature=abc123&X-Amz-Date=1", "a request with X-Amz-Signature=<redacted>&X-Amz-Date=<redacted>"),
        ("s3://bucket/videos/a b.mp4: no frames decoded", "s3://bucket/videos/a b.mp4: no frames decoded"),
        ("/data/videos/it's?.mp4 and user@example.com", "/data/videos/it's?.mp4 and user@example.com"),
    ],
)  # fmt: skip
def test_redact(text, expected):
    assert sources.redact(text) == expected


@pytest.mark.parametrize(
    "root, relpath, expected",
    [("s3://bucket/videos", "a/b c.mp4", "s3://bucket/videos/a/b c.mp4"), ("memory://v/", "x.avi", "memory://v/x.avi"),
     ("/data/videos", "a/x.mp4", "/data/videos/a/x.mp4"), (Path("/data"), "-x.mp4", "/data/-x.mp4")],
)  # fmt: skip
def test_is_url_and_join(root, relpath, expected):
    assert sources.is_url(root) is str(root).startswith(("s3:", "memory:"))
    assert sources.join(root, relpath) == expected


def test_named_puts_the_relpath_for_every_form_of_the_location():
    signed = "http://127.0.0.1:5000/b/videos/x.mp4?X-Amz-Signature=s"
    text = f"{signed}: FFmpeg failed; file:/data/x.mp4 and /data/x.mp4"
    assert sources.named(text, "x.mp4", [signed, "/data/x.mp4", "file:/data/x.mp4"]) == "x.mp4: FFmpeg failed; x.mp4 and x.mp4"


@pytest.fixture
def memory_root():
    """A fresh memory:// root, removed afterwards (the memory filesystem is the process's)."""
    url = f"memory://videos-{uuid.uuid4().hex[:8]}"
    yield url
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def test_a_url_root_scans_to_the_relpaths_and_ids_of_the_same_local_tree(local, memory_root):
    fs = fsspec.filesystem("memory")
    _upload(fs, local["bad"], memory_root)
    remote = scan_videos(memory_root, ProbeParams().extensions)
    here = scan_videos(local["bad"], ProbeParams().extensions)
    assert [(v.relpath, v.video_id) for v in remote.videos] == sorted((v.relpath, v.video_id) for v in here.videos)
    assert video_id("with spaces/clip one.MP4") in {v.video_id for v in remote.videos}
    assert all(v.path == sources.join(memory_root, v.relpath) and v.size is not None and v.version for v in remote.videos)
    with pytest.raises(MissingInputError, match="videos root memory://nowhere-[0-9a-f]+ is not a folder"):
        scan_videos(f"memory://nowhere-{uuid.uuid4().hex[:8]}", [".mp4"])
    with pytest.raises(sources.SourceUnavailable, match="nosuch://<redacted>@x cannot be listed .*Protocol not known"):
        scan_videos("nosuch://u:pw@x", [".mp4"])


def test_a_source_without_signing_is_one_temporary_copy(fixture_dir, memory_root):
    fs = fsspec.filesystem("memory")
    data = (fixture_dir / "global_pan.avi").read_bytes()
    fs.pipe_file(sources.join(memory_root, "a/global_pan.avi"), data)
    with sources.opened_source(sources.join(memory_root, "a/global_pan.avi"), expires_s=60) as ffmpeg_input:
        copy = Path(ffmpeg_input.removeprefix("file:"))
        assert ffmpeg_input.startswith("file:/") and copy.suffix == ".avi" and copy.read_bytes() == data
    assert not copy.exists() and not copy.parent.exists()
    with sources.opened_source(fixture_dir / "global_pan.avi", expires_s=60) as ffmpeg_input:
        assert ffmpeg_input == f"file:{fixture_dir / 'global_pan.avi'}"  # a local file is read where it is


# -- memory:// ------------------------------------------------------------------------------------


def test_a_memory_root_gives_the_manifest_failures_and_frames_of_the_local_folder(local, memory_root, tmp_path):
    _upload(fsspec.filesystem("memory"), local["bad"], memory_root)
    probe, _ = _probe_and_decode(memory_root, tmp_path)
    assert probe.counts["usable"] == 6 and probe.counts["failed"] == 3
    _same_outputs(local["bad_out"], tmp_path)
    meta = table_metadata(tmp_path / "manifest" / "videos.parquet")
    usable = [row["relpath"] for row in _rows(tmp_path / "manifest" / "videos.parquet", VIDEOS)]
    assert meta["videos_root"] == memory_root and sorted(meta["source_versions"]) == usable
    assert "source_versions" not in table_metadata(local["bad_out"] / "manifest" / "videos.parquet")


def test_the_flow_stage_decodes_a_source_again_from_a_url_and_names_it_by_relpath(local, memory_root, fixture_dir):
    _upload(fsspec.filesystem("memory"), local["good"], memory_root)
    spec = DecodeSpec(width=160, height=120)
    here = flow_stage.Source(sources.join(local["good"], "static_shot.mp4"), spec, (160, 120))
    remote = flow_stage.Source(sources.join(memory_root, "static_shot.mp4"), spec, (160, 120))
    frames = [np.concatenate(list(flow_stage._source_blocks(source, "static_shot.mp4"))) for source in (here, remote)]
    assert frames[0].shape == (36, 120, 160, 3) and np.array_equal(*frames)
    fsspec.filesystem("memory").pipe_file(sources.join(memory_root, "static_shot.mp4"), b"not a video at all" * 100)
    with pytest.raises(DecodeError) as err:
        list(flow_stage._source_blocks(remote, "static_shot.mp4"))
    assert str(err.value).startswith("static_shot.mp4: ") and "/tmp" not in str(err.value) and "memory:" not in str(err.value)


# -- S3 -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3(local):
    """A moto S3 server on 127.0.0.1 holding the good local tree as s3://BUCKET/videos. Credentials
    and endpoint are set only in the environment. Yields the s3fs filesystem."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_DEFAULT_PROFILE"):
            env.delenv(name, raising=False)
        env.setenv("AWS_CONFIG_FILE", os.devnull)  # nothing from the machine's ~/.aws
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        env.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
        env.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_ENDPOINT_URL_S3", f"http://{host}:{port}")
        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem()
        fs.mkdir(BUCKET)
        _upload(fs, local["good"], f"s3://{BUCKET}/videos")
        yield fs
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def _no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text and KEY_ID not in text and "x-amz" not in text.lower(), text[:300]


@pytest.fixture(scope="module")
def from_s3(s3, tmp_path_factory):
    """The good tree probed and decoded from s3://BUCKET/videos, and the inputs FFmpeg was given."""
    out = tmp_path_factory.mktemp("s3_out")
    inputs = []
    real = decode_stage.iter_frame_blocks
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decode_stage, "iter_frame_blocks", lambda source, *a, **kw: inputs.append(source) or real(source, *a, **kw))
        _probe_and_decode(f"s3://{BUCKET}/videos", out)
    return out, inputs


def test_s3_gives_the_manifest_and_frames_of_the_local_folder_read_by_presigned_url(local, from_s3):
    out, inputs = from_s3
    _same_outputs(local["good_out"], out)
    assert len(inputs) == 6 and all(source.startswith("http://127.0.0.1:") and "Signature=" in source for source in inputs)
    _no_secret(*(data.decode("latin-1") for data in tree_bytes(out / "manifest").values()))


def test_a_second_probe_of_an_unchanged_bucket_reads_no_object(from_s3, tmp_path, monkeypatch):
    out, _ = from_s3
    shutil.copytree(out / "manifest", tmp_path / "manifest")
    opened = []
    real_open = s3fs.S3FileSystem._open
    monkeypatch.setattr(s3fs.S3FileSystem, "_open", lambda self, path, *a, **kw: opened.append(path) or real_open(self, path, *a, **kw))
    summary = probe_stage.run(ProbeParams(), f"s3://{BUCKET}/videos", tmp_path / "manifest", scheduler="sync")
    assert opened == [] and summary.counts["reused from the last run"] == summary.counts["videos found"] == 6
    assert (tmp_path / "manifest" / "videos.parquet").read_bytes() == (out / "manifest" / "videos.parquet").read_bytes()


def test_a_changed_object_is_read_and_probed_again(s3, fixture_dir, from_s3, tmp_path):
    out, _ = from_s3
    shutil.copytree(out / "manifest", tmp_path / "manifest")
    s3.pipe_file(f"{BUCKET}/changed/static_shot.mp4", (fixture_dir / "cut_speed.avi").read_bytes())  # same name, other video
    for name in FIXTURE_VIDEOS[:2]:
        s3.copy(f"{BUCKET}/videos/{name}", f"{BUCKET}/changed/{name}")
    summary = probe_stage.run(ProbeParams(), f"s3://{BUCKET}/changed", tmp_path / "manifest", scheduler="sync")
    rows = {row["relpath"]: row for row in _rows(tmp_path / "manifest" / "videos.parquet", VIDEOS)}
    assert summary.counts["reused from the last run"] == 2 and rows["static_shot.mp4"]["num_frames"] == 48


def test_an_undecodable_object_fails_naming_its_relpath_and_no_secret(s3, from_s3, tmp_path, caplog):
    out, _ = from_s3
    row = next(r for r in _rows(out / "manifest" / "videos.parquet", VIDEOS) if r["relpath"] == "static_shot.mp4")
    write_table(tmp_path / "manifest" / "videos.parquet", [row], VIDEOS)
    s3.pipe_file(f"{BUCKET}/broken/static_shot.mp4", b"\x00" * 5000)  # replaced after the probe: FFmpeg cannot decode it
    caplog.set_level(logging.INFO)
    summary = decode_stage.run(DecodeParams(), tmp_path / "manifest", f"s3://{BUCKET}/broken", tmp_path / "store.zarr",
                               tmp_path / "decode", scheduler="sync")  # fmt: skip
    (failure,) = _rows(tmp_path / "decode" / "failures.parquet", FAILURES)
    assert summary.counts["failed"] == 1 and failure["reason"] == "decode_error"
    assert failure["detail"].startswith("static_shot.mp4: ") and "http" not in failure["detail"], failure["detail"]
    ours = "\n".join(record.getMessage() for record in caplog.records if record.name != "werkzeug")  # not moto's access log
    _no_secret(failure["detail"], ours, summary.text(),
               *(data.decode("latin-1") for data in tree_bytes(tmp_path / "decode").values()))  # fmt: skip
