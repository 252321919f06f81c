"""Files that survive a kill, and a power loss: atomic replacement, sets of files replaced together,
fsync, and the sweep of what a killed run leaves.

What is promised (docs/reliability.md, "What is promised under power loss"):

- A kill (SIGKILL, OOM, Ctrl-C) at any moment loses nothing finished: every output file is written
  to a temporary sibling `.<name>.<random>.tmp` and renamed over its name (`atomic_write_bytes`), so
  a reader sees the old file or the new one, whole.
- The files a stage writes into one folder are replaced together (`FileSet`): each is written to its
  temporary name, then a small journal (`.commit.json`, itself written atomically) lists the renames
  (and removals) to do, then they are done and the journal deleted. The journal is the commit point:
  a run killed before it leaves the old set (its temporary files are swept), a run killed after it
  leaves a set that `recover` completes, at the stage's next start or at the next `read_table` of
  the folder. So after a restart no folder ever holds some new tables and some old ones.
- With fsync on (the default), the same holds after a power loss or a kernel crash: every file is
  fsynced before it is renamed, and the folder after, so the rename never reaches the disk before
  the data it names. `MSCL_FSYNC=0` in the environment turns fsync off (a kill still loses
  nothing; a power loss may then leave an empty or truncated output, which the next run redoes).
- Files are created 0o666 and directories 0o777 less the umask, as by any other tool: a group that
  shares the data reads (and with umask 002 writes) them.

`kill_point(name)` is a test hook: with `MSCL_KILL_AT=name` (or `name:n`) in the environment the
process SIGKILLs itself the first (n-th) time it passes that point, so that tests can stop a run
exactly inside the windows that matter (between two renames, say), which a kill from outside would
almost never hit. Without the variable it costs a dictionary lookup.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import uuid
from pathlib import Path
from typing import Callable

TMP_SUFFIX = ".tmp"
JOURNAL = ".commit.json"

_kills: collections.Counter[str] = collections.Counter()


def fsync_enabled() -> bool:
    """Whether outputs are fsynced (`MSCL_FSYNC=0` turns it off; read at every call, so a benchmark
    can measure both in one process)."""
    return os.environ.get("MSCL_FSYNC", "1").strip().lower() not in ("0", "false", "no", "off")


def kill_point(name: str) -> None:
    """SIGKILL this process here if `MSCL_KILL_AT` names this point (test hook, see the docstring)."""
    wanted = os.environ.get("MSCL_KILL_AT")
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    _kills[name] += 1
    if _kills[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync(path: str | Path, flags: int) -> None:
    if not fsync_enabled():
        return
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    _fsync(path, 0)


def fsync_dir(path: str | Path) -> None:
    """Make the entries of folder `path` (a rename, a new or deleted file) durable."""
    _fsync(path, os.O_DIRECTORY)


def fsync_tree(root: str | Path) -> None:
    """fsync every file and folder under `root` (an array before it is published)."""
    if not fsync_enabled():
        return
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_file(os.path.join(folder, name))
        fsync_dir(folder)


def temporary_name(path: Path) -> Path:
    """A fresh temporary sibling of `path`: `.<name>.<random>.tmp`, which `sweep` removes."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}")


def write_temporary(path: Path, write: Callable[[str], object]) -> Path:
    """Create a temporary sibling of `path` (mode 0o666 less the umask, as open() would), call
    write(its path), fsync it and return it; on an error remove it and raise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666))
    try:
        write(str(tmp))
        fsync_file(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def atomic_write_bytes(path: str | Path, write: Callable[[str], object]) -> None:
    """Call write(tmp_path) then rename over `path`, so readers never see a half-written file; with
    fsync, durable once this returns."""
    path = Path(path)
    tmp = write_temporary(path, write)
    kill_point("atomic.written")
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class FileSet:
    """Files of one folder replaced together: `stage` each, then `commit` (or use it as a context
    manager: committed when the block ends normally, dropped if it raises).

        with FileSet(out) as files:
            files.stage("a.parquet", lambda tmp: ...)
            files.stage("b.parquet", lambda tmp: ...)
            files.remove("checkpoint.pt")      # optional: deleted as part of the same commit
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.staged: dict[str, Path] = {}
        self.removed: list[str] = []

    def stage(self, name: str, write: Callable[[str], object]) -> None:
        if name in self.staged or Path(name).name != name:
            raise ValueError(f"{name!r}: one plain file name per set")
        self.staged[name] = write_temporary(self.folder / name, write)

    def remove(self, name: str) -> None:
        self.removed.append(name)

    def commit(self) -> None:
        journal = {"replace": {name: tmp.name for name, tmp in self.staged.items()}, "remove": self.removed}
        try:  # the commit point: once the journal is in place, the set will be completed
            atomic_write_bytes(self.folder / JOURNAL, lambda tmp: Path(tmp).write_text(json.dumps(journal, indent=1)))
        except BaseException:
            self.discard()
            raise
        self.staged = {}
        kill_point("commit.journal")
        _apply(self.folder, journal)

    def discard(self) -> None:
        for tmp in self.staged.values():
            tmp.unlink(missing_ok=True)
        self.staged = {}

    def __enter__(self) -> FileSet:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


def _apply(folder: Path, journal: dict) -> None:
    """Do a committed journal's renames and removals (each at most once: a step already done is
    skipped, so a run killed in here, or two processes at once, finish it alike), then drop it."""
    for name, tmp in journal.get("replace", {}).items():
        try:
            os.replace(folder / tmp, folder / name)
        except FileNotFoundError:  # done already
            pass
        kill_point("commit.renamed")
    for name in journal.get("remove", []):
        (folder / name).unlink(missing_ok=True)
    fsync_dir(folder)
    (folder / JOURNAL).unlink(missing_ok=True)
    fsync_dir(folder)


def recover(folder: str | Path) -> bool:
    """Finish a set of files committed in `folder` by a run that was killed before it was done.
    Returns whether there was one. Cheap when there is none (one stat)."""
    folder = Path(folder)
    try:
        journal = json.loads((folder / JOURNAL).read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):  # unreadable (cannot be half-written: it is itself renamed in)
        return False
    for name in [*journal.get("replace", {}), *journal.get("replace", {}).values(), *journal.get("remove", [])]:
        if Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"{folder / JOURNAL}: {name!r} is not a file of this folder")
    _apply(folder, journal)
    return True


def sweep(folder: str | Path) -> int:
    """At a stage's start, in an output folder it alone writes: finish a committed set (`recover`),
    then delete the temporary files (`.*.tmp`) killed runs left. Returns how many were deleted."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    if not recover(folder):
        (folder / JOURNAL).unlink(missing_ok=True)  # unreadable: never committed whole (fsync off and a power loss)
    removed = 0
    for path in folder.glob(f".*{TMP_SUFFIX}"):
        if path.is_file() or path.is_symlink():
            path.unlink(missing_ok=True)
            removed += 1
    return removed
