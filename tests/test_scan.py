"""pipeline/io/scan.py: video ids and the folder walk."""

import hashlib
import os
import re

import pytest

from pipeline.io.scan import scan_videos, video_id

SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@pytest.mark.parametrize(
    "relpath, expected",
    [
        ("v_ApplyEyeMakeup_g01_c01.avi", "v_ApplyEyeMakeup_g01_c01.avi-"),
        ("class a/vid 01.mp4", "class_a__vid_01.mp4-"),
        ("-leading-dash.mp4", "leading-dash.mp4-"),
        ("it's \"quoted\".avi", "it_s_quoted_.avi-"),
        ("../weird/ü.webm", "weird___.webm-"),
    ],
)
def test_id_is_a_readable_slug_plus_hash(relpath, expected):
    vid = video_id(relpath)
    assert vid.startswith(expected)
    assert re.fullmatch(r"[0-9a-f]{8}", vid.rsplit("-", 1)[1])
    assert SAFE.match(vid) and not vid.startswith("__")


def test_ids_are_stable_and_distinct_for_paths_that_slug_alike():
    assert video_id("a b.mp4") == video_id("a b.mp4") == "a_b.mp4-" + video_id("a b.mp4").rsplit("-", 1)[1]
    assert video_id("a b.mp4") != video_id("a_b.mp4")
    assert video_id("x/y.mp4") != video_id("x__y.mp4")
    # A pinned value: the id must never change between releases, or stores would be rebuilt.
    assert video_id("class a/vid 01.mp4") == "class_a__vid_01.mp4-" + hashlib.sha1(b"class a/vid 01.mp4").hexdigest()[:8]


def test_long_paths_give_bounded_ids():
    assert len(video_id("d/" * 200 + "v.mp4")) <= 80 + 9


def test_scan_is_recursive_sorted_case_insensitive_and_survives_loops(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.MP4").write_bytes(b"x")
    (tmp_path / "b" / "c.avi").write_bytes(b"x")
    (tmp_path / "b" / "notes.txt").write_text("x")
    os.symlink("..", tmp_path / "b" / "up")  # loop back to the root
    os.symlink(tmp_path / "b", tmp_path / "b_link")  # a second way into b
    result = scan_videos(tmp_path, [".mp4", ".avi"])
    assert [v.relpath for v in result.videos] == ["a.MP4", "b/c.avi"]
    assert sorted(rel for rel, _ in result.skipped) == ["b/up", "b_link"]


def test_scan_without_following_links(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "v.mp4").write_bytes(b"x")
    os.symlink(tmp_path / "real", tmp_path / "link")
    result = scan_videos(tmp_path, [".mp4"], follow_symlinks=False)
    assert [v.relpath for v in result.videos] == ["real/v.mp4"]


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="videos root .* is not a folder"):
        scan_videos(tmp_path / "nope", [".mp4"])
