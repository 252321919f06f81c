"""Which FFmpeg binary the pipeline runs, and running it safely.

An `ffmpeg` on PATH wins (a user's build may have hardware decoders); otherwise the static binary
that the `imageio-ffmpeg` wheel ships, so a fresh machine needs nothing installed by hand. No
`ffprobe` is needed anywhere: probing parses FFmpeg's own output (see pipeline/io/probe.py).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import UserError

ENV_VAR = "MSCL_FFMPEG"  # explicit override, checked first


class FFmpegNotFound(UserError, RuntimeError):
    pass


@dataclass(frozen=True)
class FFmpegBinary:
    path: str
    source: str  # "env", "PATH" or "imageio-ffmpeg"
    version: str


@functools.lru_cache(maxsize=1)
def ffmpeg_binary() -> FFmpegBinary:
    """Locate FFmpeg once per process: $MSCL_FFMPEG, then PATH, then the imageio-ffmpeg wheel."""
    candidates: list[tuple[str | None, str]] = [(os.environ.get(ENV_VAR), "env"), (shutil.which("ffmpeg"), "PATH")]
    try:
        import imageio_ffmpeg

        candidates.append((imageio_ffmpeg.get_ffmpeg_exe(), "imageio-ffmpeg"))
    except (ImportError, RuntimeError):
        pass
    for path, source in candidates:
        if path and Path(path).is_file() and os.access(path, os.X_OK):
            return FFmpegBinary(path=path, source=source, version=_version(path))
    raise FFmpegNotFound(
        "no FFmpeg found: install the project's dependencies (pip install -e .) which include imageio-ffmpeg, "
        f"put ffmpeg on PATH, or set {ENV_VAR}=/path/to/ffmpeg"
    )


def _version(path: str) -> str:
    out = subprocess.run([path, "-hide_banner", "-version"], capture_output=True, text=True, timeout=30).stdout
    match = re.match(r"ffmpeg version (\S+)", out)
    return match.group(1) if match else "unknown"


def ffmpeg_exe() -> str:
    return ffmpeg_binary().path


def input_path(path: str | Path) -> str:
    """An absolute path, so a file named '-x.mp4' is never read as an option, and `file:` so a ':'
    in a name is never read as a protocol. A string already in that form, or an http(s) URL (a
    presigned one, pipeline/io/sources.py), is FFmpeg's input as it is."""
    if isinstance(path, str) and (path.startswith(("http://", "https://")) or (path.startswith("file:/") and "://" not in path)):
        return path
    return "file:" + str(Path(path).absolute())


def has_encoder(name: str) -> bool:
    out = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=30
    ).stdout
    return re.search(rf"^\s\S{{6}}\s{re.escape(name)}\s", out, re.MULTILINE) is not None
