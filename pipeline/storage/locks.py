"""One writer at a time: a lock beside what a stage writes, naming its holder.

A second `extract-flow` on the same store used to clear `<store>.partial/` at start-up, deleting the
first run's arrays in progress. Now each stage that writes the store (decode, extract-flow,
import-rawframes) or a folder others must not share (train's) takes `<path>.lock` first. The lock is
an `fcntl.flock` on that file, which the kernel drops when its holder dies however it dies, so a
killed run never leaves it stuck; the file itself (left in place) records the holder's host, pid,
stage and start time, for the message a second run gets.

A store on object storage (an fsspec URL) has no flock: its lock is an object `<store>.lock` beside
it, created only if absent (S3's conditional put, `If-None-Match: *`), holding the holder's details,
a random token and when its lease ends. The holder renews the lease every third of its length
(`MSCL_LEASE_S`, default 60 s) from a thread; a run that dies stops renewing, and once the lease
has ended the next run takes the lock over. Writers on other machines (dask workers) check the
token before making an array visible (`check_lease`), so a run whose lease was taken over never
publishes again.
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
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import fsspec

from schemas.errors import UserError
from schemas.paths import is_url

F = TypeVar("F", bound=Callable[..., Any])
SUFFIX = ".lock"
LEASE_ENV = "MSCL_LEASE_S"


class LockedError(UserError, RuntimeError):
    """Another run holds the lock; the message names it."""


class LeaseLost(UserError, RuntimeError):
    """The lease of a store on object storage ended or was taken over: this run must not publish."""


def lease_seconds() -> float:
    return float(os.environ.get(LEASE_ENV, "60"))


def lock_path(path: str | Path) -> Path:
    """`<path>.lock`, beside `path` (never inside it: a DVC output or a zarr store holds only data)."""
    path = Path(path).absolute()
    return path.with_name(path.name + SUFFIX)


def lock_url(url: str) -> str:
    return str(url).rstrip("/") + SUFFIX


def holder(path: str | Path) -> dict[str, Any] | None:
    """What the lock file (or object) of `path` says of its (last) holder, or None."""
    try:
        if is_url(path):
            fs, where = fsspec.core.url_to_fs(lock_url(str(path)))
            return json.loads(fs.cat_file(where))
        return json.loads(lock_path(path).read_text())
    except (OSError, ValueError):
        return None


def _me(stage: str) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "stage": stage,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)}  # fmt: skip


@contextlib.contextmanager
def hold(path: str | Path, stage: str) -> Iterator[str | None]:
    """Hold the lock of `path` for `stage`, or raise LockedError naming who has it. Yields the
    lease's token for a URL (to give to `check_lease` where arrays are published), else None."""
    if is_url(path):
        with _Lease(str(path), stage) as lease:
            yield lease.token
        return
    where = lock_path(path)
    where.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(where, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(_busy(path, stage)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_me(stage)) + "\n").encode(), 0)
        yield None
    finally:
        os.close(fd)  # releases the flock


class _Lease:
    """The lock object of a store at a URL, held with a lease renewed from a thread (module doc)."""

    def __init__(self, store: str, stage: str) -> None:
        self.store, self.stage, self.token = store, stage, uuid.uuid4().hex
        self.fs, self.key = fsspec.core.url_to_fs(lock_url(store))
        self.length = lease_seconds()
        self.stopped = threading.Event()

    def _body(self) -> bytes:
        return json.dumps({**_me(self.stage), "token": self.token, "lease_ends": time.time() + self.length}).encode()

    def __enter__(self) -> _Lease:
        for _ in range(3):
            if self._create():
                break
            info = holder(self.store)
            if info is not None and info.get("lease_ends", 0) > time.time():
                raise LockedError(_busy(self.store, self.stage, info))
            with contextlib.suppress(FileNotFoundError):  # ended: the run that held it died
                self.fs.rm_file(self.key)
        else:
            raise LockedError(_busy(self.store, self.stage, holder(self.store) or {}))
        self.renewer = threading.Thread(target=self._renew, name="lease", daemon=True)
        self.renewer.start()
        return self

    def _create(self) -> bool:
        """Create the lock object if there is none; whether this run did."""
        try:
            self.fs.pipe_file(self.key, self._body(), mode="create")
        except FileExistsError:
            return False
        except OSError as exc:  # some S3 servers answer 412 without naming the condition
            if "Precondition" not in str(exc) and getattr(exc, "errno", None) != 22:
                raise
            return False
        return (holder(self.store) or {}).get("token") == self.token

    def _renew(self) -> None:
        while not self.stopped.wait(self.length / 3):
            info = holder(self.store)
            if info is not None and info.get("token") != self.token:
                return  # taken over: check_lease now refuses this run's publishing
            try:
                self.fs.pipe_file(self.key, self._body())
            except OSError:  # a network blip: the next renewal, a third of the lease later, tries again
                continue

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.renewer.join()
        if (holder(self.store) or {}).get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.key)


def check_lease(store: str, token: str | None) -> None:
    """Raise LeaseLost unless the run of lease `token` still holds the store at URL `store` (None:
    nothing to check, a local store or no lease). Called just before an array is made visible."""
    if token is None:
        return
    info = holder(store) or {}
    if info.get("token") != token or info.get("lease_ends", 0) <= time.time():
        raise LeaseLost(f"{store}: this run's lease on the store ended or was taken over by {_who(info)}; it publishes "
                        f"nothing more. Run the stage again: it redoes only what is missing")  # fmt: skip


def _who(info: dict[str, Any]) -> str:
    return (f"{info.get('stage', 'another run')} (host {info.get('host', '?')}, pid {info.get('pid', '?')}, "
            f"started {info.get('started', '?')})")  # fmt: skip


def _busy(path: str | Path, stage: str, info: dict[str, Any] | None = None) -> str:
    info = holder(path) if info is None else info
    if is_url(path):
        left = max(0.0, (info or {}).get("lease_ends", 0) - time.time())
        return (f"{path} is in use by {_who(info or {})}; {stage} will not run on it at the same time. Wait for that run "
                f"to end or stop it; if it died, its lease ends within {left:.0f} s and the next run takes over "
                f"({lock_url(str(path))})")  # fmt: skip
    return (f"{path} is in use by {_who(info or {})}; {stage} will not run on it at the same time. Wait for that run to end "
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
