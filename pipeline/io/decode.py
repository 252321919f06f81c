"""Decoding a video to RGB frames with FFmpeg: scaling and frame-rate conversion happen inside FFmpeg
and frames arrive through a pipe, a block at a time, so memory does not grow with video length."""

from __future__ import annotations

import queue
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import ffmpeg
import numpy as np

from pipeline.io.ffmpeg_binary import ffmpeg_exe, input_path


class DecodeError(RuntimeError):
    pass


class TooLarge(DecodeError):
    """A video whose frames do not fit the memory a decode may use. `needed_mib`: what writing it
    would take (None: the machine refused a block the budget allowed)."""

    def __init__(self, message: str, needed_mib: int | None = None) -> None:
        super().__init__(message)
        self.needed_mib = needed_mib


@dataclass(frozen=True)
class ReadPlan:
    """How many frames FFmpeg's output is read in at once, and how many such blocks wait ahead."""

    block_frames: int = 32
    read_ahead: int = 16


def read_plan(frame_bytes: int, shard_frames: int, budget_bytes: int) -> ReadPlan:
    """Blocks sized so that what a decode holds fits `budget_bytes`: the shard being gathered and
    its joined copy (2 x shard_frames frames), plus the blocks read ahead, the one the reader fills
    and the one in hand. At most 32 frames x 16 blocks (what small frames need to keep FFmpeg busy);
    TooLarge if not even one frame in each place fits beside the shard."""
    shard = 2 * shard_frames * frame_bytes
    spare = (budget_bytes - shard) // frame_bytes  # frames in flight: (read_ahead + 2) blocks, queued and in hand
    if spare < 3:
        mib = 2**20
        needed = -(-(shard + 3 * frame_bytes) // mib)
        raise TooLarge(f"a frame takes {frame_bytes / mib:.1f} MiB, and writing a shard of {shard_frames} frames needs about "
                       f"{needed:,} MiB, more than the {budget_bytes // mib:,} MiB a decode may use", needed)  # fmt: skip
    block = max(1, min(32, spare // 18))
    return ReadPlan(block_frames=block, read_ahead=max(1, min(16, spare // block - 2)))


@dataclass(frozen=True)
class DecodeSpec:
    """What to produce from one video; sizes are of the stored frames."""

    width: int
    height: int
    fps: Fraction | None = None  # resample to this rate; None keeps every decoded frame
    frame_stride: int = 1  # keep every n-th decoded frame
    max_frames: int | None = None
    threads: int = 1  # FFmpeg decoder threads
    timeout_s: float = 3600.0


def output_size(display_width: int, display_height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) with the short side at `short_side` and the aspect ratio kept (rounded)."""
    if short_side is None:
        return display_width, display_height
    if display_width <= display_height:
        return short_side, max(1, round(display_height * short_side / display_width))
    return max(1, round(display_width * short_side / display_height)), short_side


def stored_frame_count(source_frames: int, source_fps: Fraction, spec: DecodeSpec) -> int:
    """How many frames the decode will store, for progress and sanity checks (exact for CFR video)."""
    if spec.fps is not None:
        count = int(round(source_frames * spec.fps / source_fps))
    else:
        count = -(-source_frames // spec.frame_stride)
    return min(count, spec.max_frames) if spec.max_frames else count


def decode_command(path: str | Path, spec: DecodeSpec, *, source_width: int, source_height: int) -> list[str]:
    """The FFmpeg command line, built with ffmpeg-python."""
    stream = ffmpeg.input(input_path(path), threads=spec.threads)
    video = stream.video
    if spec.frame_stride > 1:
        video = video.filter("select", f"not(mod(n,{spec.frame_stride}))")
    if spec.fps is not None:
        video = video.filter("fps", fps=f"{spec.fps.numerator}/{spec.fps.denominator}")
    if (spec.width, spec.height) != (source_width, source_height):
        # Area averaging when shrinking avoids aliasing; bicubic when enlarging.
        shrinking = spec.width * spec.height < source_width * source_height
        flags = ("area" if shrinking else "bicubic") + "+accurate_rnd+full_chroma_int"
        video = video.filter("scale", spec.width, spec.height, flags=flags)
    out_args: dict[str, object] = {"format": "rawvideo", "pix_fmt": "rgb24", "fps_mode": "passthrough"}
    if spec.max_frames:
        out_args["frames:v"] = spec.max_frames
    output = ffmpeg.output(video, "pipe:", **out_args).global_args("-hide_banner", "-nostdin", "-loglevel", "error")
    return output.compile(cmd=ffmpeg_exe())


def iter_frame_blocks(
    path: str | Path,
    spec: DecodeSpec,
    *,
    source_width: int,
    source_height: int,
    plan: ReadPlan = ReadPlan(),
) -> Iterator[np.ndarray]:
    """Yield (n, H, W, 3) uint8 RGB blocks of `plan.block_frames` frames (the last may be short).
    Raises DecodeError if FFmpeg fails or no frame arrives, TooLarge if a block cannot be allocated.

    `source_width/height` are the size FFmpeg decodes to (after its autorotation); when the target
    size differs (other resolution, or anamorphic pixels made square) FFmpeg scales.
    """
    frame_bytes = spec.width * spec.height * 3
    args = decode_command(path, spec, source_width=source_width, source_height=source_height)
    # stderr goes to a file: a pipe nobody reads could fill up and stall FFmpeg.
    with tempfile.TemporaryFile() as err, subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err) as proc:
        assert proc.stdout is not None
        watchdog = threading.Timer(spec.timeout_s, proc.kill)  # a hung FFmpeg must not hang the stage
        watchdog.start()
        # A reader thread drains the pipe while the caller compresses and writes, so FFmpeg keeps
        # decoding instead of waiting on a full pipe (bench/decode.py measures the difference).
        blocks: queue.Queue = queue.Queue(maxsize=plan.read_ahead)
        stop = threading.Event()
        reader = threading.Thread(target=_read_blocks, args=(proc.stdout, frame_bytes * plan.block_frames, blocks, stop), daemon=True)
        reader.start()
        total = 0
        try:
            while (data := _next_block(blocks, reader)) is not None:
                if isinstance(data, MemoryError):
                    raise TooLarge(f"{path}: out of memory reading FFmpeg's output in blocks of {plan.block_frames} frames of "
                                   f"{spec.width}x{spec.height} ({frame_bytes * plan.block_frames / 2**20:,.0f} MiB): this machine "
                                   f"gives less than the memory budget says")  # fmt: skip
                if isinstance(data, BaseException):
                    raise DecodeError(f"{path}: reading FFmpeg's output failed: {data}")
                if len(data) % frame_bytes:
                    raise DecodeError(f"{path}: FFmpeg output ended inside a frame ({len(data)} bytes)")
                block = np.frombuffer(data, np.uint8).reshape(-1, spec.height, spec.width, 3)
                total += len(block)
                yield block
        finally:
            stop.set()
            if reader.is_alive():
                proc.kill()  # the caller stopped early: unblock the reader
            reader.join()
            proc.stdout.close()
            code = proc.wait()
            timed_out = not watchdog.is_alive() and code != 0
            watchdog.cancel()
        err.seek(0)
        message = err.read().decode(errors="replace").strip()
        if timed_out:
            raise DecodeError(f"{path}: FFmpeg did not finish within {spec.timeout_s:.0f} s (decode.timeout_s)")
        if code != 0:
            raise DecodeError(f"{path}: FFmpeg failed (exit {code}) after {total} frames: {message or 'no message'}")
        if total == 0:
            raise DecodeError(f"{path}: no frames decoded: {message or 'no message'}")


def _next_block(blocks: queue.Queue, reader: threading.Thread):
    """The reader's next item; if the reader is gone without a word, an error, never a wait forever."""
    while True:
        try:
            return blocks.get(timeout=1.0)
        except queue.Empty:
            if not reader.is_alive() and blocks.empty():
                return RuntimeError("the thread reading FFmpeg's output ended without a word")


def _read_blocks(stream, size: int, out: queue.Queue, stop: threading.Event) -> None:
    """Put byte blocks of `size` (the last may be short) on `out`, then None; any error, MemoryError
    included, is put as itself, so the caller raises it instead of waiting. Gives up as soon as `stop`
    is set, so the caller can always join this thread."""

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        while data := stream.read(size):
            if not put(data):
                return
    except BaseException as exc:  # the pipe broke under us, or no memory for a block: the caller raises it
        put(exc)
        return
    put(None)
