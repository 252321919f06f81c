"""Encoding RGB frames into a real video file with FFmpeg (for the demo data and test fixtures)."""

from __future__ import annotations

import itertools
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import ffmpeg
import numpy as np

from pipeline.io.ffmpeg_binary import ffmpeg_exe, input_path

# Codec presets: what a user meets in the wild. Single-threaded and bit-exact, so the same frames
# always give the same bytes.
CODECS: dict[str, dict[str, object]] = {
    "h264": {"vcodec": "libx264", "pix_fmt": "yuv420p", "preset": "medium", "x264-params": "threads=1"},
    "mpeg4": {"vcodec": "mpeg4", "pix_fmt": "yuv420p", "q:v": 2, "threads": 1},  # MPEG-4 Part 2, as UCF101's xvid
    "vp9": {"vcodec": "libvpx-vp9", "pix_fmt": "yuv420p", "b:v": 0, "deadline": "good", "cpu-used": 4, "threads": 1},
    "ffv1": {"vcodec": "ffv1", "pix_fmt": "yuv444p", "threads": 1},  # lossless
}


class EncodeError(RuntimeError):
    pass


def encode_video(
    frames: Iterable[np.ndarray],
    path: str | Path,
    *,
    fps: Fraction | tuple[int, int] | int,
    codec: str = "h264",
    quality: int | None = None,
    extra: dict[str, object] | None = None,
) -> Path:
    """Pipe (H, W, 3) uint8 RGB frames into FFmpeg and write `path` (container from its extension).

    `quality` is the CRF for h264/vp9 (lower is better). `extra` adds or overrides output options.
    """
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose from {sorted(CODECS)}")
    rate = Fraction(*fps) if isinstance(fps, tuple) else Fraction(fps)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iterator = iter(frames)
    first = next(iterator)
    height, width = first.shape[:2]
    options = dict(CODECS[codec])
    if quality is not None and codec in ("h264", "vp9"):
        options["crf"] = quality
    options.update(extra or {})
    options.update({"fflags": "+bitexact", "flags:v": "+bitexact", "map_metadata": -1})
    stream = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=str(rate))
    args = ffmpeg.output(stream, input_path(path), **options).global_args("-hide_banner", "-loglevel", "error", "-y").compile(cmd=ffmpeg_exe())
    with subprocess.Popen(args, stdin=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdin is not None and proc.stderr is not None
        try:
            for frame in itertools.chain([first], iterator):
                if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
                    raise ValueError(f"frames must all be ({height}, {width}, 3) uint8, got {frame.shape} {frame.dtype}")
                proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        except BrokenPipeError:
            pass  # FFmpeg quit early; its stderr says why, below
        finally:
            proc.stdin.close()
        stderr = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            raise EncodeError(f"FFmpeg failed to write {path}: {stderr.strip()}")
    return path
