"""Probe one video with FFmpeg alone (no ffprobe): stream facts, exact frame count, decode health.

One FFmpeg run decodes the first video stream to nothing (`wrapped_avframe` into `framecrc`, which
copies no pixels) and prints everything needed:
  - the input header on stderr: container, codec, pixel format, size, frame rate, rotation, duration;
  - one framecrc line per decoded frame on stdout: the exact count, as the decode stage will see it
    (`-fps_mode passthrough` neither drops nor duplicates frames), the size after rotation and the
    sample aspect ratio;
  - the encoder time base on stdout: 1 / FFmpeg's guess of the frame rate, as an exact rational;
  - the `vfrdet` filter's verdict on variable frame rate, and any decoder errors, on stderr.
The parsing functions are pure and tested on captured FFmpeg output.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from pipeline.io.ffmpeg_binary import ffmpeg_exe, input_path


class ProbeError(Exception):
    """A video that cannot be used. `reason` is a short category, str(self) says why for a person."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Header:
    """What FFmpeg's input header says about the first video stream."""

    container: str
    codec: str
    pix_fmt: str
    width: int
    height: int
    fps_text: str | None  # "29.97", "25", "30k": the stream's tbr (r_frame_rate), as FFmpeg prints it
    duration_s: float | None
    rotation: int  # degrees counter-clockwise, normalised to 0/90/180/270


@dataclass(frozen=True)
class ProbeInfo:
    """A usable video: its header, its decoded frame count and display size, its health."""

    header: Header
    num_frames: int
    decoded_width: int  # as FFmpeg decodes it (after rotation), before any scaling
    decoded_height: int
    display_width: int  # and with square pixels, as a player shows it
    display_height: int
    sar: Fraction
    fps: Fraction
    duration_s: float
    is_vfr: bool
    errors: tuple[str, ...]  # decoder complaints; non-empty means the video decodes only in part


_INPUT_RE = re.compile(r"^Input #0, (?P<container>.+?), from ")
_DURATION_RE = re.compile(r"^\s*Duration: (?P<h>\d+):(?P<m>\d+):(?P<s>[\d.]+)")
_VIDEO_RE = re.compile(r"^\s*Stream #0:\d+\S*: Video: (?P<rest>.*)$")
_AUDIO_RE = re.compile(r"^\s*Stream #0:\d+\S*: Audio: ")
_SIZE_RE = re.compile(r"(?<![\w.])(?P<w>[1-9]\d*)x(?P<h>[1-9]\d*)(?![\w.])")  # not a fourcc like 0x3163
_TBR_RE = re.compile(r"(?P<v>[\d.]+k?) tbr")
_FPS_RE = re.compile(r"(?P<v>[\d.]+k?) fps")
_ROTATION_RE = re.compile(r"(?:rotation of|rotate\s*:)\s*(?P<deg>-?[\d.]+)")
_LEVEL_RE = re.compile(r"^(?:\[[^\]]+ @ [^\]]+\] )?\[(?P<level>\w+)\] (?P<msg>.*)$")
_VFR_RE = re.compile(r"VFR:\S+ \((?P<vfr>\d+)/(?P<cfr>\d+)\)(?: min: (?P<min>-?\d+) max: (?P<max>-?\d+) avg: (?P<avg>-?\d+))?")


def _split_log(stderr: str) -> list[tuple[str, str]]:
    """Lines of a `-loglevel level+info` log as (level, message); unprefixed lines continue the last."""
    lines: list[tuple[str, str]] = []
    for raw in stderr.splitlines():
        match = _LEVEL_RE.match(raw)
        if match:
            lines.append((match.group("level"), raw))
        elif raw.strip():
            lines.append((lines[-1][0] if lines else "info", raw))
    return lines


def _strip_prefix(line: str) -> str:
    match = _LEVEL_RE.match(line)
    return match.group("msg") if match else line


def parse_fps_text(text: str) -> Fraction:
    """FFmpeg prints rates as '25', '29.97' or '30k'; recover the rational it rounded.

    FFmpeg prints non-integer rates with two decimals, so '29.97' is read as the NTSC rate 30000/1001
    when that prints the same, and as the exact decimal otherwise.
    """
    scale = 1000 if text.endswith("k") else 1
    value = Fraction(text.rstrip("k")) * scale
    if value.denominator == 1:
        return value
    ntsc = Fraction(round(value * Fraction(1001, 1000)) * 1000, 1001)
    if f"{float(ntsc):.2f}" == f"{float(value):.2f}":
        return ntsc
    return value


def parse_header(stderr: str) -> Header | None:
    """The first video stream of input #0, or None when the input has no video stream.

    Raises ProbeError when FFmpeg could not open the input at all.
    """
    container = None
    duration = None
    video_line = None
    video_details: list[str] = []  # the lines under the video stream: metadata and side data
    in_video = False
    has_audio = False
    in_input = False
    for _, raw in _split_log(stderr):
        line = _strip_prefix(raw)
        if (match := _INPUT_RE.match(line)) is not None:
            container, in_input = match.group("container"), True
            continue
        if not in_input:
            continue
        if line.startswith(("Stream mapping:", "Output #0")):
            break
        if (match := _DURATION_RE.match(line)) is not None:
            duration = int(match.group("h")) * 3600 + int(match.group("m")) * 60 + float(match.group("s"))
        is_stream = line.lstrip().startswith("Stream #")
        if is_stream:
            in_video = False
        if _AUDIO_RE.match(line):
            has_audio = True
        elif (match := _VIDEO_RE.match(line)) is not None and video_line is None:
            video_line, in_video = match.group("rest"), True
        elif in_video:
            video_details.append(line)
    if container is None:
        raise ProbeError("not_a_video", _open_failure(stderr))
    if video_line is None:
        what = "an audio-only file" if has_audio else "a file with no video stream"
        raise ProbeError("no_video_stream", f"{what}: nothing to decode; remove it from the videos folder")
    codec = video_line.split(",")[0].split()[0]
    pix_fmt = _pix_fmt(video_line)
    size = _SIZE_RE.search(video_line)
    if size is None:
        raise ProbeError("not_a_video", f"FFmpeg reports no frame size for the video stream: {video_line!r}")
    rate = _TBR_RE.search(video_line) or _FPS_RE.search(video_line)
    rotation = 0
    for line in video_details:
        if (match := _ROTATION_RE.search(line)) is not None:
            rotation = round(float(match.group("deg"))) % 360
    return Header(
        container=container,
        codec=codec,
        pix_fmt=pix_fmt,
        width=int(size.group("w")),
        height=int(size.group("h")),
        fps_text=rate.group("v") if rate else None,
        duration_s=duration,
        rotation=rotation,
    )


def _pix_fmt(video_line: str) -> str:
    # "h264 (High) (avc1 / 0x31637661), yuv420p(progressive), 160x120 ..." -> "yuv420p"; the
    # codec part may itself contain commas inside parentheses, so split at top-level commas only.
    depth, parts, current = 0, [], ""
    for char in video_line:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return parts[1].split("(")[0].strip() if len(parts) > 1 else "unknown"


def _open_failure(stderr: str) -> str:
    messages = [
        _strip_prefix(raw) for level, raw in _split_log(stderr)
        if level in ("error", "fatal") and not _strip_prefix(raw).startswith("Error opening input file ")
    ]  # fmt: skip
    said = "; ".join(dict.fromkeys(messages)) or "no message"
    return f"FFmpeg cannot open it ({said}): the file is truncated, corrupt or not a video"


@dataclass(frozen=True)
class FrameCrc:
    """What FFmpeg's framecrc output says about the decoded frames."""

    time_base: Fraction | None  # 1 / frame rate
    size: tuple[int, int] | None  # (width, height) of decoded frames, after rotation
    sar: Fraction  # sample (pixel) aspect ratio; 1 for square pixels
    count: int


def parse_framecrc(stdout: str) -> FrameCrc:
    time_base, size, sar, count = None, None, Fraction(1), 0
    for line in stdout.splitlines():
        if line.startswith("#tb 0:"):
            num, den = line.split(":", 1)[1].strip().split("/")
            time_base = Fraction(int(num), int(den))
        elif line.startswith("#dimensions 0:"):
            width, height = line.split(":", 1)[1].strip().split("x")
            size = (int(width), int(height))
        elif line.startswith("#sar 0:"):
            num, den = line.split(":", 1)[1].strip().split("/")
            if int(num) > 0 and int(den) > 0:  # 0/1 means unknown: square pixels
                sar = Fraction(int(num), int(den))
        elif line and not line.startswith("#"):
            count += 1
    return FrameCrc(time_base, size, sar, count)


def decoded_size(width: int, height: int, rotation: int) -> tuple[int, int]:
    """Frame size as FFmpeg decodes it: coded size, turned upright by the rotation metadata."""
    return (height, width) if rotation in (90, 270) else (width, height)


def display_size(width: int, height: int, sar: Fraction) -> tuple[int, int]:
    """Size with square pixels: anamorphic video (SAR != 1) is widened, as players show it."""
    if sar == 1:
        return width, height
    return max(1, round(width * sar)), height


def parse_vfr(stderr: str) -> bool:
    """True when frame intervals vary by more than 10% of their mean (vfrdet's last report).

    Timestamps rounded to the container's tick (webm: 1 ms, so 29.97 fps gives 33/34 ms) differ by
    one tick and are not variable frame rate.
    """
    reports = [m for m in (_VFR_RE.search(line) for line in stderr.splitlines()) if m]
    if not reports or reports[-1].group("min") is None:
        return False
    last = reports[-1]
    if int(last.group("vfr")) == 0:
        return False
    low, high, mean = int(last.group("min")), int(last.group("max")), int(last.group("avg"))
    return mean > 0 and (high - low) > max(1, 0.1 * mean)


def decode_errors(stderr: str) -> tuple[str, ...]:
    """Decoder complaints after the header, deduplicated, in order (at most 20)."""
    errors: dict[str, None] = {}
    for level, raw in _split_log(stderr):
        if level in ("error", "fatal"):
            # Drop the "[h264 @ 0x55...]" context; its address differs per run.
            errors[re.sub(r"^\[([^\]@]+?) @ [^\]]+\] \[\w+\] ", r"\1: ", raw)] = None
    return tuple(errors)[:20]


def probe_command(path: str | Path) -> list[str]:
    return [
        ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "level+info",
        "-i", input_path(path),
        "-map", "0:v:0", "-fps_mode", "passthrough", "-vf", "vfrdet",
        "-c:v", "wrapped_avframe", "-f", "framecrc", "pipe:1",
    ]  # fmt: skip


def probe_video(path: str | Path, *, timeout_s: float = 600.0, min_frames: int = 2) -> ProbeInfo:
    """Probe one video. Raises ProbeError (with a reason) for anything that cannot be used."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ProbeError("unreadable", f"cannot read the file: {exc.strerror or exc}") from None
    if size == 0:
        raise ProbeError("empty_file", "the file is empty (0 bytes); re-copy or remove it")
    try:
        proc = subprocess.run(probe_command(path), capture_output=True, text=True, errors="replace", timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ProbeError("timeout", f"FFmpeg did not finish within {timeout_s:.0f} s (probe.timeout_s)") from None
    header = parse_header(proc.stderr)
    assert header is not None  # parse_header raises for every input it cannot describe
    crc = parse_framecrc(proc.stdout)
    count = crc.count
    errors = decode_errors(proc.stderr)
    if count == 0:
        said = "; ".join(errors) or "no frames"
        raise ProbeError("decode_error", f"no frame decodes ({said})")
    if count < min_frames:
        raise ProbeError(
            "too_few_frames",
            f"only {count} decodable frame(s), at least {min_frames} needed (probe.min_frames); "
            "optical flow needs two frames",
        )
    fps = Fraction(1) / crc.time_base if crc.time_base else None
    if fps is None or fps <= 0:
        fps = parse_fps_text(header.fps_text) if header.fps_text else Fraction(25)
    decoded_w, decoded_h = crc.size if crc.size else (header.width, header.height)
    display_w, display_h = display_size(decoded_w, decoded_h, crc.sar)
    is_vfr = parse_vfr(proc.stderr)
    return ProbeInfo(
        header=header,
        num_frames=count,
        decoded_width=decoded_w,
        decoded_height=decoded_h,
        display_width=display_w,
        display_height=display_h,
        sar=crc.sar,
        fps=fps,
        # Frames / rate is exact for constant-rate video; the header's duration has 10 ms steps.
        duration_s=header.duration_s if (is_vfr and header.duration_s) else float(count / fps),
        is_vfr=is_vfr,
        errors=errors,
    )
