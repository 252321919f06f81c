"""pipeline/io/probe.py and the probe stage: FFmpeg output parsing, the fixture's manifest, bad inputs."""

import hashlib
import os
import shutil
from fractions import Fraction

import pytest

from conftest import BAD_EXPECTATIONS, FIXTURE_VIDEOS
from pipeline.io.probe import (
    FrameCrc,
    ProbeError,
    decoded_size,
    display_size,
    parse_fps_text,
    parse_framecrc,
    parse_header,
    parse_vfr,
)
from pipeline.io.scan import video_id
from pipeline.storage.tables import read_table
from schemas.params import ProbeParams
from schemas.tables import FAILURES, VIDEOS
from stages import probe as probe_stage

HEADER = """\
[info] Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'file:/x/r.mp4':
[info]   Metadata:
[info]     major_brand     : isom
[info]   Duration: 00:01:02.50, start: 0.000000, bitrate: 66 kb/s
[info]   Stream #0:0[0x1](und): Audio: aac (LC) (mp4a / 0x6134706D), 44100 Hz, mono, fltp, 70 kb/s (default)
[info]   Stream #0:1[0x2](und): Video: h264 (High 10) (avc1 / 0x31637661), yuv420p10le(tv, bt709, progressive), 1920x1080 [SAR 1:1 DAR 16:9], 54 kb/s, 29.97 fps, 29.97 tbr, 30k tbn (default)
[info]     Metadata:
[info]       handler_name    : VideoHandler
[info]     Side data:
[info]       Display Matrix: rotation of -90.00 degrees
[info] Stream mapping:
"""


def test_parse_header_reads_the_video_stream_not_the_audio():
    header = parse_header(HEADER)
    assert header.container == "mov,mp4,m4a,3gp,3g2,mj2"
    assert (header.codec, header.pix_fmt, header.width, header.height) == ("h264", "yuv420p10le", 1920, 1080)
    assert header.fps_text == "29.97"
    assert header.duration_s == pytest.approx(62.5)
    assert header.rotation == 270  # -90 degrees, normalised


def test_parse_header_failures():
    audio_only = "\n".join(line for line in HEADER.splitlines() if "Video:" not in line)
    with pytest.raises(ProbeError, match="audio-only") as err:
        parse_header(audio_only)
    assert err.value.reason == "no_video_stream"
    with pytest.raises(ProbeError, match="moov atom not found") as err:
        parse_header("[in#0 @ 0x1] [error] moov atom not found\n[fatal] Error opening input files: Invalid data\n")
    assert err.value.reason == "not_a_video"


@pytest.mark.parametrize(
    "text, expected",
    [("25", Fraction(25)), ("29.97", Fraction(30000, 1001)), ("23.98", Fraction(24000, 1001)),
     ("59.94", Fraction(60000, 1001)), ("12.5", Fraction(25, 2)), ("30k", Fraction(30000)), ("14.99", Fraction(15000, 1001)), ("12.34", Fraction(617, 50))],
)  # fmt: skip
def test_parse_fps_text(text, expected):
    assert parse_fps_text(text) == expected


def test_parse_framecrc_counts_frames_and_reads_rate_size_and_pixel_aspect():
    out = "#tb 0: 1001/30000\n#media_type 0: video\n#dimensions 0: 120x160\n#sar 0: 64/45\n" + "0, 0, 0, 1, 424, 0xab\n" * 7
    assert parse_framecrc(out) == FrameCrc(Fraction(1001, 30000), (120, 160), Fraction(64, 45), 7)
    assert parse_framecrc("#sar 0: 0/1\n").sar == 1  # unknown means square


@pytest.mark.parametrize(
    "size, rotation, sar, decoded, display",
    [((720, 576), 0, Fraction(64, 45), (720, 576), (1024, 576)), ((192, 144), 90, Fraction(1), (144, 192), (144, 192)),
     ((160, 120), 180, Fraction(1), (160, 120), (160, 120))],
)  # fmt: skip
def test_decoded_and_display_sizes(size, rotation, sar, decoded, display):
    assert decoded_size(*size, rotation) == decoded
    assert display_size(*decoded, sar) == display


@pytest.mark.parametrize(
    "line, vfr",
    [("VFR:0.448276 (13/16) min: 0 max: 40 avg: 18", True),
     ("VFR:0.500000 (20/20) min: 33 max: 34 avg: 33", False),  # webm millisecond rounding
     ("VFR:0.000000 (0/39)", False), ("VFR:-nan (0/0)", False)],
)  # fmt: skip
def test_parse_vfr(line, vfr):
    assert parse_vfr(f"[Parsed_vfrdet_0 @ 0x1] [info] {line}\n") is vfr


# The fixture's manifest, from how tests/fixtures/make_fixtures.py made each video.
GOLDEN = {
    # relpath: (container, codec, width, height, fps, frames)
    "cut_speed.avi": ("avi", "mpeg4", 175, 131, Fraction(15), 48),
    "global_pan.avi": ("avi", "mpeg4", 160, 120, Fraction(25), 40),
    "object_on_pan.mp4": ("mov,mp4,m4a,3gp,3g2,mj2", "h264", 192, 144, Fraction(30000, 1001), 40),
    "rotate_zoom.webm": ("matroska,webm", "vp9", 161, 121, Fraction(30), 40),
    "static_shot.mp4": ("mov,mp4,m4a,3gp,3g2,mj2", "h264", 160, 120, Fraction(24), 36),
}


@pytest.fixture(scope="module")
def fixture_manifest(fixture_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("manifest")
    summary = probe_stage.run(ProbeParams(), fixture_dir, out, scheduler="sync")
    return out, summary


def test_fixture_manifest_golden_values(fixture_dir, fixture_manifest):
    out, summary = fixture_manifest
    rows = {row["relpath"]: row for row in read_table(out / "videos.parquet", VIDEOS).to_pylist()}
    assert sorted(rows) == FIXTURE_VIDEOS == sorted(GOLDEN)
    for relpath, (container, codec, width, height, fps, frames) in GOLDEN.items():
        row = rows[relpath]
        assert row["video_id"] == video_id(relpath)
        assert row["sha256"] == hashlib.sha256((fixture_dir / relpath).read_bytes()).hexdigest()
        assert row["size_bytes"] == (fixture_dir / relpath).stat().st_size
        assert (row["container"], row["codec"], row["width"], row["height"]) == (container, codec, width, height)
        assert (row["display_width"], row["display_height"], row["sar_num"], row["sar_den"]) == (width, height, 1, 1)
        assert Fraction(row["fps_num"], row["fps_den"]) == fps and row["fps"] == pytest.approx(float(fps))
        assert row["num_frames"] == frames
        assert row["duration_s"] == pytest.approx(frames / float(fps), abs=1e-6)
        assert (row["pix_fmt"], row["rotation"], row["is_vfr"], row["status"], row["warnings"]) == ("yuv420p", 0, False, "ok", "")
    assert read_table(out / "failures.parquet", FAILURES).num_rows == 0
    assert summary.counts["usable"] == 5


@pytest.fixture(scope="module")
def bad_manifest(bad_videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad_manifest")
    summary = probe_stage.run(ProbeParams(), bad_videos, out, scheduler="sync")
    videos = {row["relpath"]: row for row in read_table(out / "videos.parquet", VIDEOS).to_pylist()}
    failures = {row["relpath"]: row for row in read_table(out / "failures.parquet", FAILURES).to_pylist()}
    return videos, failures, summary


@pytest.mark.parametrize("relpath", sorted(BAD_EXPECTATIONS))
def test_each_bad_input_is_handled(bad_manifest, relpath):
    videos, failures, _ = bad_manifest
    status, expected = BAD_EXPECTATIONS[relpath]
    if status == "failed":
        assert relpath not in videos
        row = failures[relpath]
        assert (row["stage"], row["reason"]) == ("probe", expected)
        assert len(row["detail"]) > 20 and "/tmp" not in row["detail"]  # for people, and machine-independent
    else:
        assert relpath not in failures, failures.get(relpath)
        row = videos[relpath]
        assert row["status"] == status
        if expected is not None:
            assert row["num_frames"] == expected


def test_bad_input_specifics(bad_manifest):
    videos, failures, summary = bad_manifest
    assert videos["rotated_90.mp4"]["rotation"] == 90
    assert (videos["rotated_90.mp4"]["width"], videos["rotated_90.mp4"]["height"]) == (192, 144)
    assert (videos["rotated_90.mp4"]["display_width"], videos["rotated_90.mp4"]["display_height"]) == (144, 192)
    assert videos["variable_rate.mkv"]["is_vfr"] is True
    assert videos["odd_size_161x121.webm"]["is_vfr"] is False
    assert videos["gray.mkv"]["pix_fmt"] == "gray"
    wide = videos["anamorphic_sar_2_1.mp4"]
    assert (wide["width"], wide["height"], wide["sar_num"], wide["sar_den"]) == (160, 120, 2, 1)
    assert (wide["display_width"], wide["display_height"]) == (320, 120)
    assert videos["ten_bit.mp4"]["pix_fmt"] == "yuv420p10le"
    degraded = videos["corrupt_middle.mp4"]
    assert 0 < degraded["num_frames"] < 60 and "h264" in degraded["warnings"]
    assert "audio-only" in failures["audio_only.mp4"]["detail"]
    assert "probe.min_frames" in failures["single_frame.mp4"]["detail"]
    assert "notes.txt" not in videos and "notes.txt" not in failures
    assert any("loop/back_up" in note for note in summary.notes)
    assert summary.counts["usable"] + summary.counts["failed"] == len(BAD_EXPECTATIONS)


def test_rerun_reuses_unchanged_rows_and_probes_changed_files(fixture_dir, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("static_shot.mp4", "global_pan.avi"):
        (videos / name).write_bytes((fixture_dir / name).read_bytes())
    out = tmp_path / "manifest"
    first = probe_stage.run(ProbeParams(), videos, out, scheduler="sync")
    assert first.counts["reused from the last run"] == 0
    before = (out / "videos.parquet").read_bytes()
    second = probe_stage.run(ProbeParams(), videos, out, scheduler="sync")
    assert second.counts["reused from the last run"] == 2
    assert (out / "videos.parquet").read_bytes() == before  # same inputs, same bytes
    (videos / "global_pan.avi").write_bytes((fixture_dir / "cut_speed.avi").read_bytes())  # content changed
    third = probe_stage.run(ProbeParams(), videos, out, scheduler="sync")
    assert third.counts["reused from the last run"] == 1
    rows = {row["relpath"]: row for row in read_table(out / "videos.parquet", VIDEOS).to_pylist()}
    assert rows["global_pan.avi"]["num_frames"] == 48
    fourth = probe_stage.run(ProbeParams(min_frames=3), videos, out, scheduler="sync")
    assert fourth.counts["reused from the last run"] == 0  # other params: probe everything again


def test_a_name_that_is_not_utf8_costs_only_its_video(fixture_dir, tmp_path):
    """Before: the manifest could not be written (pyarrow's UnicodeEncodeError), so no video was probed."""
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(fixture_dir / "static_shot.mp4", videos / "static_shot.mp4")
    os.link(videos / "static_shot.mp4", os.path.join(os.fsencode(videos), b"caf\xe9.mp4"))
    summary = probe_stage.run(ProbeParams(), videos, tmp_path / "manifest", scheduler="sync")
    assert summary.counts["usable"] == 1 and summary.counts["failed"] == 1
    (row,) = read_table(tmp_path / "manifest" / "failures.parquet").to_pylist()
    assert row["relpath"] == "caf\\xe9.mp4" and row["reason"] == "bad_name" and "rename it" in row["detail"]
