"""Running one function over many items with dask, with a progress bar.

`scheduler` chooses where the work runs:
  - None or "local": a dask LocalCluster of `workers` single-threaded processes on this machine;
  - "sync": in this process, one item after another (debugging, profiling);
  - an address such as "tcp://10.0.0.5:8786": an existing dask cluster (its workers must see the
    same paths and have this project installed).
Results are yielded as items finish, in completion order. The function itself must turn per-item
failures into results (see stages/): an exception escaping it is a bug and stops the run.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import deque
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = "30s"  # how long to wait for an existing cluster's scheduler

# Environment of local worker processes: one thread per numeric library (the parallelism is across
# workers), and NOT dask's default MALLOC_TRIM_THRESHOLD_=65536, which makes glibc return every
# frame-sized buffer to the OS and slowed Zarr writes 2.5x in bench/decode.py.
WORKER_ENVIRON = {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1}


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@contextmanager
def dask_client(scheduler: str | None, workers: int | None):
    """A dask Client for `scheduler` (see module doc); None for "sync"."""
    if scheduler == "sync":
        yield None
        return
    import dask
    from dask.distributed import Client, LocalCluster

    # distributed configures its loggers on import; its INFO chatter would drown the progress bar.
    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.worker", "distributed.core"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if scheduler in (None, "", "local"):
        n = workers or default_workers()
        with dask.config.set({"distributed.nanny.pre-spawn-environ": WORKER_ENVIRON}), LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
            # Task errors reach us through their futures; what workers log while the cluster shuts
            # down (heartbeats to a scheduler that just closed) is noise for people.
            silence_logs=logging.CRITICAL,
        ) as cluster, Client(cluster) as client:
            _register_options(client)
            yield client
    else:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise OSError(
                f"cannot reach the dask scheduler at {scheduler} within {CONNECT_TIMEOUT} ({exc}); "
                "check the address given to --scheduler, or leave it out to use a local cluster"
            ) from None
        with client:
            _register_options(client)
            yield client


def _register_options(client) -> None:
    """The fsspec options of params (data.storage_options), on every worker of the cluster."""
    from pipeline.storage import fsconfig

    if options := fsconfig.configured():
        client.register_plugin(fsconfig.WorkerOptions(options))


def map_progress(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    desc: str = "",
    unit: str = "item",
    weight: Callable[[T], int] = lambda item: 1,
    noun: str = "videos",
    ahead: Callable[[T], object] | None = None,
) -> Iterator[R]:
    """Yield fn(item) for every item, showing a bar of `unit`s (each item counts `weight(item)`) and
    how many of the items (`noun`) are done.

    With `ahead`, the items run in this process, in order, as fn(item, future of ahead(item)),
    while `workers` threads run `ahead` for the next items: for work that one process must own (a
    model on a GPU: one CUDA context, full batches), fed by reading and decoding around it."""
    if not items:
        return
    total = sum(weight(item) for item in items)
    bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True, mininterval=0.5)
    done = 0

    def advance(item: T) -> None:
        nonlocal done
        done += 1
        bar.update(weight(item))
        bar.set_postfix_str(f"{done}/{len(items)} {noun}", refresh=False)

    try:
        if ahead is not None:
            for item, result in _ahead_of(fn, items, ahead, workers or default_workers()):
                advance(item)
                yield result
            return
        with dask_client(scheduler, workers) as client:
            if client is None:
                for item in items:
                    result = fn(item)
                    advance(item)
                    yield result
                return
            from dask.distributed import as_completed

            futures = {client.submit(fn, item, pure=False): item for item in items}
            for future in as_completed(futures):
                result = future.result()
                advance(futures[future])
                yield result
    finally:
        bar.close()


def _ahead_of(fn: Callable, items: Sequence[T], ahead: Callable[[T], object], threads: int) -> Iterator[tuple[T, R]]:
    """(item, fn(item, future of ahead(item))) in order, `ahead` running up to 2 x `threads` items
    ahead in a pool of threads (they release the GIL in decoders and I/O)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads, thread_name_prefix="ahead") as pool:
        pending: deque = deque()
        rest = iter(items)
        for item in itertools.islice(rest, 2 * threads):
            pending.append((item, pool.submit(ahead, item)))
        while pending:
            item, future = pending.popleft()
            for more in itertools.islice(rest, 1):
                pending.append((more, pool.submit(ahead, more)))
            yield item, fn(item, future)
