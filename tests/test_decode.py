"""pipeline/io/decode.py: FFmpeg decoding against an independent decoder (OpenCV), scaling, rates."""

import queue
import threading
import time
from fractions import Fraction

import cv2
import numpy as np
import pytest

from conftest import FIXTURES
from pipeline.data import synth
from pipeline.io import decode as decode_module
from pipeline.io.decode import (
    DecodeError,
    DecodeSpec,
    ReadPlan,
    TooLarge,
    iter_frame_blocks,
    output_size,
    read_plan,
    stored_frame_count,
)

SIZES = {"global_pan.avi": (160, 120), "rotate_zoom.webm": (161, 121), "object_on_pan.mp4": (192, 144),
         "static_shot.mp4": (160, 120), "cut_speed.avi": (175, 131)}  # fmt: skip


def opencv_frames(path) -> np.ndarray:
    """The independent reference: OpenCV's own decoder, converted to RGB."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame[..., ::-1])
    capture.release()
    return np.stack(frames)


def decode_all(path, spec, size) -> np.ndarray:
    return np.concatenate(list(iter_frame_blocks(path, spec, source_width=size[0], source_height=size[1], plan=ReadPlan(block_frames=7))))


@pytest.mark.parametrize(
    "size, short, expected",
    [((320, 240), 128, (171, 128)), ((240, 320), 128, (128, 171)), ((161, 121), 128, (170, 128)),
     ((128, 128), 128, (128, 128)), ((1920, 1080), 112, (199, 112)), ((175, 131), None, (175, 131))],
)  # fmt: skip
def test_output_size_keeps_aspect_with_the_short_side_fixed(size, short, expected):
    assert output_size(*size, short) == expected


@pytest.mark.parametrize("name", sorted(SIZES))
def test_native_size_decode_matches_opencv(name):
    size = SIZES[name]
    ours = decode_all(FIXTURES / name, DecodeSpec(*size), size)
    reference = opencv_frames(FIXTURES / name)
    assert ours.shape == reference.shape
    assert ours.dtype == np.uint8
    if name == "cut_speed.avi":
        # Odd-width MPEG-4: OpenCV's bundled FFmpeg converts the chroma of the odd column differently;
        # the next test shows ours is the closer of the two to the true picture.
        assert np.abs(ours.astype(int) - reference).mean() < 3.0
    else:
        np.testing.assert_array_equal(ours, reference)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_decode_is_close_to_the_rendered_source(name):
    size = SIZES[name]
    ours = decode_all(FIXTURES / name, DecodeSpec(*size), size).astype(int)
    source = np.stack(list(synth.render_frames(synth.SceneTruth.load(FIXTURES / f"{name}.truth.json"))))
    error = np.abs(ours - source).mean()
    assert error < 6.0  # lossy codecs, but the same picture
    assert error <= np.abs(opencv_frames(FIXTURES / name).astype(int) - source).mean() + 1e-9


@pytest.mark.parametrize("name", ["global_pan.avi", "rotate_zoom.webm"])
def test_scaled_decode_is_close_to_a_resized_reference(name):
    size = SIZES[name]
    width, height = output_size(*size, 128)
    ours = decode_all(FIXTURES / name, DecodeSpec(width, height), size)
    reference = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_CUBIC) for f in opencv_frames(FIXTURES / name)])
    assert ours.shape == reference.shape == (len(reference), 128, width, 3)
    assert np.abs(ours.astype(int) - reference).mean() < 4.0  # different resamplers, same picture


def test_frame_stride_and_max_frames_select_the_right_frames():
    size = SIZES["global_pan.avi"]
    every = decode_all(FIXTURES / "global_pan.avi", DecodeSpec(*size), size)
    strided = decode_all(FIXTURES / "global_pan.avi", DecodeSpec(*size, frame_stride=3), size)
    np.testing.assert_array_equal(strided, every[::3])
    first = decode_all(FIXTURES / "global_pan.avi", DecodeSpec(*size, frame_stride=3, max_frames=5), size)
    np.testing.assert_array_equal(first, every[::3][:5])
    assert stored_frame_count(40, Fraction(25), DecodeSpec(*size, frame_stride=3)) == len(strided) == 14


def test_fps_conversion_resamples_in_time():
    size = SIZES["global_pan.avi"]  # 40 frames at 25 fps
    every = decode_all(FIXTURES / "global_pan.avi", DecodeSpec(*size), size)
    half = decode_all(FIXTURES / "global_pan.avi", DecodeSpec(*size, fps=Fraction(25, 2)), size)
    assert len(half) == stored_frame_count(40, Fraction(25), DecodeSpec(*size, fps=Fraction(25, 2))) == 20
    np.testing.assert_array_equal(half, every[::2])  # halving the rate keeps every other frame
    double = decode_all(FIXTURES / "global_pan.avi", DecodeSpec(*size, fps=Fraction(50)), size)
    np.testing.assert_array_equal(double, np.repeat(every, 2, axis=0))  # doubling repeats each frame


def test_rotation_metadata_gives_upright_frames(bad_videos):
    # rotated_90.mp4 is object_on_pan.mp4 with a 90-degree display rotation: frames come out turned.
    upright = decode_all(bad_videos / "rotated_90.mp4", DecodeSpec(144, 192), (144, 192))
    original = opencv_frames(FIXTURES / "object_on_pan.mp4")
    assert upright.shape == (40, 192, 144, 3)
    np.testing.assert_array_equal(upright, np.rot90(original, k=1, axes=(1, 2)))


@pytest.mark.parametrize("name", ["gray.mkv", "ten_bit.mp4"])
def test_gray_and_ten_bit_sources_become_rgb(bad_videos, name):
    frames = decode_all(bad_videos / name, DecodeSpec(96, 72), (96, 72))
    assert frames.shape == (12, 72, 96, 3) and frames.dtype == np.uint8
    if name == "gray.mkv":
        assert (frames[..., 0] == frames[..., 1]).all() and (frames[..., 1] == frames[..., 2]).all()
    assert frames.std() > 10  # real picture content, not a blank


def test_undecodable_input_raises_a_decode_error_naming_the_file(bad_videos):
    with pytest.raises(DecodeError, match="random_bytes.mp4"):
        decode_all(bad_videos / "random_bytes.mp4", DecodeSpec(96, 72), (96, 72))


def test_anamorphic_pixels_are_made_square(bad_videos):
    # anamorphic_sar_2_1.mp4 is static_shot.mp4 (160x120) with pixels twice as wide as tall.
    wide = decode_all(bad_videos / "anamorphic_sar_2_1.mp4", DecodeSpec(320, 120), (160, 120))
    reference = np.stack([cv2.resize(f, (320, 120), interpolation=cv2.INTER_CUBIC) for f in opencv_frames(FIXTURES / "static_shot.mp4")])
    assert wide.shape == reference.shape == (36, 120, 320, 3)
    assert np.abs(wide.astype(int) - reference).mean() < 4.0


@pytest.mark.parametrize("frame_bytes", [170 * 128 * 3, 1920 * 1080 * 3, 3840 * 2160 * 3, 8000 * 8000 * 3])
@pytest.mark.parametrize("budget_mib", [64, 1024, 16384])
def test_what_a_decode_holds_fits_its_memory_budget_or_the_video_is_refused(frame_bytes, budget_mib):
    budget, shard = budget_mib * 2**20, 64
    try:
        plan = read_plan(frame_bytes, shard, budget)
    except TooLarge as exc:
        assert (2 * shard + 3) * frame_bytes > budget
        assert exc.needed_mib * 2**20 >= (2 * shard + 3) * frame_bytes and "more than the" in str(exc)
        return
    held = 2 * shard + (plan.read_ahead + 2) * plan.block_frames  # frames: the shard twice, the blocks queued and in hand
    assert held * frame_bytes <= budget and 1 <= plan.block_frames <= 32 and 1 <= plan.read_ahead <= 16
    if frame_bytes == 170 * 128 * 3 and budget_mib >= 1024:
        assert plan == ReadPlan()  # small frames keep the blocks they always had


def test_a_reader_that_dies_takes_its_decode_down_at_once(monkeypatch):
    """Before: a reader thread that died of MemoryError left the decode waiting forever."""
    spec = DecodeSpec(width=64, height=48)

    def die(stream, size, out, stop):
        return None  # a reader gone without putting anything, as one killed by an error it did not catch

    monkeypatch.setattr(decode_module, "_read_blocks", die)
    started = time.monotonic()
    with pytest.raises(DecodeError, match="ended without a word"):
        list(iter_frame_blocks(FIXTURES / "static_shot.mp4", spec, source_width=160, source_height=120))
    assert time.monotonic() - started < 30


def test_a_block_that_cannot_be_allocated_is_reported_not_waited_for():
    class NoMemory:
        def read(self, size):
            raise MemoryError

    out: queue.Queue = queue.Queue()
    decode_module._read_blocks(NoMemory(), 10**12, out, threading.Event())
    assert isinstance(out.get_nowait(), MemoryError)
