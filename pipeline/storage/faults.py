"""Faults of the machine, not of the input: a full disk, a quota, a read-only or forbidden output.

A video that does not decode is the video's fault: it goes to the failures table and the stage goes
on. A write that fails for lack of space or permission is not: recording the video as unreadable
would make `dvc repro` record success with videos missing, and every other video would fail the
same way. Such an error stops the stage with `EnvironmentFault`, whose one-line message names the
video, the path and, for space, how much is free and how much the item needed; the CLI prints it
and exits 1. Nothing partial is published (arrays are built beside the store and renamed in), and
the next run, once the cause is fixed, does the missing work only.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Callable

from schemas.errors import UserError

# No input can cause these: they are about where the output goes.
SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
ALWAYS_ENVIRONMENT = SPACE_ERRNOS | {errno.EROFS}
# These are the environment's when they concern an output path, the input's when a source file.
PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM})


# How to repair a damaged array of a group ("frames", "flow/<method>"; `imported`: written by an
# import), as the layer above the library phrases it: stages/common.py installs the command line's.
# The library names no command; without a hint its messages end at the damage.
repair_hint: Callable[[str, bool], str] | None = None


class CorruptChunkError(UserError, ValueError):
    """Stored data that does not read back (pipeline/storage/store.py); the message names the video, the
    array and the chunk; `video_id`, `group` and `imported` say whose. A fault of that video's data:
    its stage records it and goes on. Shown, it ends with how to repair it (`repair_hint`)."""

    def __init__(self, message: str, video_id: str | None = None, group: str | None = None, imported: bool = False) -> None:
        super().__init__(message)
        self.video_id, self.group, self.imported = video_id, group, imported

    def __str__(self) -> str:
        message = super().__str__()
        if repair_hint is None or self.group is None:
            return message
        return f"{message}; repair: {repair_hint(self.group, self.imported)}"

    def __reduce__(self):  # across processes (dask) with its fields
        return (type(self), (self.args[0], self.video_id, self.group, self.imported))


class EnvironmentFault(UserError, RuntimeError):
    """The stage cannot write its output; the message is the whole story, for people."""


def is_environment(exc: BaseException, outputs: tuple[str | Path, ...] = ()) -> bool:
    """Whether `exc` is the machine's fault: out of space or quota, a read-only file system, or a
    permission refused on a path under one of `outputs` (the store, output folders)."""
    if isinstance(exc, EnvironmentFault):
        return True
    if not isinstance(exc, OSError) or exc.errno is None:
        return False
    if exc.errno in ALWAYS_ENVIRONMENT:
        return True
    if exc.errno in PERMISSION_ERRNOS and exc.filename is not None:
        path = os.path.abspath(os.fsdecode(exc.filename))
        return any(_under(path, root) for root in outputs)
    return False


def _under(path: str, root: str | Path) -> bool:
    root = os.path.abspath(os.fsdecode(root))
    partial = root + ".partial"  # arrays are built beside the store (pipeline/storage/store.py)
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in (root, partial))


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the file system of `path` (its nearest existing parent), or None."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def describe(exc: BaseException, video: str | None, where: str | Path, needed: int | None = None) -> str:
    """One line for people: the video, the path, the cause, and for space what is free and needed."""
    if isinstance(exc, EnvironmentFault):
        return str(exc)
    path = os.fsdecode(exc.filename) if isinstance(exc, OSError) and exc.filename else str(where)
    cause = (exc.strerror if isinstance(exc, OSError) and exc.strerror else None) or str(exc)
    line = f"{f'video {video!r}: ' if video else ''}cannot write {path}: {cause}"
    if isinstance(exc, OSError) and exc.errno in SPACE_ERRNOS:
        free = free_bytes(path)
        line += f"; {_size(free)} free" if free is not None else ""
        line += f", this video needs about {_size(needed)}" if needed else ""
        line += " (free space or raise the quota, then run the stage again: finished work is kept)"
    elif isinstance(exc, OSError) and exc.errno == errno.EROFS:
        line += " (the output is on a read-only file system: point data.store or the output folder elsewhere)"
    else:
        line += " (check the output's owner and permissions, then run the stage again)"
    return line


def fault(exc: BaseException, video: str, where: str | Path, needed: int | None = None) -> EnvironmentFault:
    return EnvironmentFault(describe(exc, video, where, needed))


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
