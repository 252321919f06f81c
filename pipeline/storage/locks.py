"""One writer at a time: a lock beside what a stage writes, naming its holder.

A second `extract-flow` on the same store used to clear `<store>.partial/` at start-up, deleting the
first run's arrays in progress. Now each stage that writes the store (decode, extract-flow,
import-rawframes) or a folder others must not share (train's) takes `<path>.lock` first. The lock is
an `fcntl.flock` on that file, which the kernel drops when its holder dies however it dies, so a
killed run never leaves it stuck; the file itself (left in place) records the holder's host, pid,
stage and start time, for the message a second run gets.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import functools
import inspect
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from schemas.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])
SUFFIX = ".lock"


class LockedError(UserError, RuntimeError):
    """Another run holds the lock; the message names it."""


def lock_path(path: str | Path) -> Path:
    """`<path>.lock`, beside `path` (never inside it: a DVC output or a zarr store holds only data)."""
    path = Path(path).absolute()
    return path.with_name(path.name + SUFFIX)


def holder(path: str | Path) -> dict[str, Any] | None:
    """What the lock file of `path` says of its (last) holder, or None."""
    try:
        return json.loads(lock_path(path).read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def hold(path: str | Path, stage: str) -> Iterator[None]:
    """Hold the lock of `path` for `stage`, or raise LockedError naming who has it."""
    where = lock_path(path)
    where.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(where, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(_busy(path, stage)) from None
        me = {"host": socket.gethostname(), "pid": os.getpid(), "stage": stage,
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv)}  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def _busy(path: str | Path, stage: str) -> str:
    info = holder(path) or {}
    who = (f"{info.get('stage', 'another run')} (host {info.get('host', '?')}, pid {info.get('pid', '?')}, "
           f"started {info.get('started', '?')})")  # fmt: skip
    return (f"{path} is in use by {who}; {stage} will not run on it at the same time. Wait for that run to end "
            f"or stop it; a run that dies releases the lock by itself ({lock_path(path)})")


def holding(argument: str, stage: str, *, distributed: bool = False) -> Callable[[F], F]:
    """Run the decorated stage function holding the lock of its argument `argument` (a path).
    `distributed`: the function runs once per rank of one job (torchrun), and rank 0 holds the lock
    for the job; rank 0 of a second job refuses, and torchrun then stops its other ranks."""

    def decorate(function: F) -> F:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def locked(*args: Any, **kwargs: Any) -> Any:
            if distributed and os.environ.get("RANK", "0") != "0":
                return function(*args, **kwargs)
            path = signature.bind(*args, **kwargs).arguments[argument]
            with hold(path, stage):
                return function(*args, **kwargs)

        return locked  # type: ignore[return-value]

    return decorate
