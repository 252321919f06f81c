"""Finding the videos under a root folder, and naming each with a stable, path-safe id."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.io import sources
from schemas.errors import MissingInputError

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_SLUG = 80


def video_id(relpath: str) -> str:
    """A stable, unique id that is safe as a file name and as a Zarr node name.

    A readable slug of the relative path, plus 8 hex digits of its hash so that paths that slug alike
    ("a b.mp4", "a_b.mp4") stay distinct. Depends on the relative path only, never on the machine.
    """
    posix = relpath.replace(os.sep, "/")
    slug = _UNSAFE.sub("_", posix.replace("/", "__")).strip("._-") or "video"
    digest = hashlib.sha1(posix.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{slug[:_MAX_SLUG]}-{digest}"


def _points_to_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False


@dataclass(frozen=True)
class FoundVideo:
    path: Path | str  # local: as reached from the root (may pass through symlinks); URL root: the object's URL
    relpath: str  # POSIX, relative to the root
    video_id: str
    size: int | None = None  # URL root: the object's size and version from the listing (None for a local file)
    version: str | None = None  # (pipeline/io/sources.py object_version)


@dataclass(frozen=True)
class ScanResult:
    videos: list[FoundVideo]
    skipped: list[tuple[str, str]]  # (relpath, why) for directories not entered


@dataclass(frozen=True)
class FoundFile:
    path: Path  # as reached from the root (may pass through symlinks)
    relpath: str  # POSIX, relative to the root; bytes that are not UTF-8 as surrogate escapes (os.fsdecode)


def walk_files(root: str | Path, wanted: Callable[[str], bool], *, follow_symlinks: bool = True,
               what: str = "probe.follow_symlinks") -> tuple[list[FoundFile], list[tuple[str, str]]]:  # fmt: skip
    """Every file under `root` whose name `wanted` accepts, in sorted order, and (relpath, why) of
    what was not entered or read.

    Symlinked directories are followed when asked, each real directory at most once, so a symlink
    loop ends the descent with a note instead of recursing forever. Without `follow_symlinks` no
    symlink is read, file or folder, and each (a wanted file or a folder) is listed as skipped,
    saying which setting (`what`) decides it.
    """
    seen_dirs: set[tuple[int, int]] = set()
    found: list[FoundFile] = []
    skipped: list[tuple[str, str]] = []

    def walk(directory: Path, rel: str) -> None:
        try:
            stat = directory.stat()
        except OSError as exc:
            skipped.append((rel or ".", f"cannot enter: {exc.strerror or exc}"))
            return
        key = (stat.st_dev, stat.st_ino)
        if key in seen_dirs:
            skipped.append((rel, "directory already visited (symlink loop or duplicate link); not entered again"))
            return
        seen_dirs.add(key)
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError as exc:
            skipped.append((rel or ".", f"cannot list: {exc.strerror or exc}"))
            return
        for entry in entries:
            child_rel = f"{rel}/{entry.name}" if rel else entry.name
            if not follow_symlinks and entry.is_symlink():
                if wanted(entry.name) or _points_to_dir(entry):
                    skipped.append((child_rel, f"a symlink, not followed ({what}: false)"))
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=follow_symlinks)
            except OSError:
                is_dir = False  # a link loop on a file name: treated as a file, its reader reports it
            if is_dir:
                walk(Path(entry.path), child_rel)
            elif wanted(entry.name):
                found.append(FoundFile(Path(entry.path), child_rel))

    walk(Path(root), "")
    for rel, why in skipped:
        log.warning("skipped %s: %s", shown(rel), why)
    return found, [(shown(rel), why) for rel, why in skipped]


def scan_videos(root: str | Path, extensions: list[str] | tuple[str, ...], *, follow_symlinks: bool = True) -> ScanResult:
    """Every file under `root` whose extension (any case) is in `extensions`, in sorted order
    (symlinks as `walk_files` treats them). `root` may be an fsspec URL (pipeline/io/sources.py):
    its objects get the relpaths, so the ids, that the same tree in a local folder gets."""
    wanted = {ext.lower() for ext in extensions}
    if sources.is_url(root):
        remote = sources.list_files(str(root), lambda name: Path(name).suffix.lower() in wanted)
        return ScanResult([FoundVideo(f.url, f.relpath, video_id(f.relpath), f.size, f.version) for f in remote], [])
    root = Path(root)
    if not root.is_dir():
        raise MissingInputError(f"videos root {root} is not a folder")
    files, skipped = walk_files(root, lambda name: Path(name).suffix.lower() in wanted, follow_symlinks=follow_symlinks)
    return ScanResult([FoundVideo(f.path, f.relpath, video_id(f.relpath)) for f in files], skipped)


def shown(relpath: str) -> str:
    """A path as text for messages and tables: bytes that are not UTF-8 as \\xNN escapes."""
    return os.fsencode(relpath).decode("utf-8", "backslashreplace")
