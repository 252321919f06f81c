"""The streaming training dataset: MSCL's two views of a video, RGB and aligned flow, from the store.

    index = ClipIndex.load("data/sample/clips.parquet", sampling=True)
    dataset = MSCLClips(index, "data/store.zarr", flow_method="tvl1", params=DatasetParams())
    loader = ClipLoader(dataset, batch_size=32, num_workers=4, pin_memory=True)
    for epoch in range(dataset.epoch, epochs):     # a restored dataset starts at its saved epoch
        for batch in loader:                       # resumes mid-epoch after load_state_dict
            batch = to_device(batch, device)
            ...
            checkpoint["dataset"] = dataset.state_dict()

An epoch is a list of items, shuffled by (seed, epoch), padded or cut to a multiple of the world size
and dealt to the ranks like `DistributedSampler` deals indices. An item is a video (`dataset.epoch:
per_video`, the authors': one sample per video, view 1 at one of its allowed starts drawn at
random) or a clip (`per_clip`: every start the index allows for view 1 once, so a video with more
selected clips weighs more). The allowed starts are the MDS-selected ones, or every valid start
with sampling off. Within a rank, positions are cut
into blocks of one batch and the blocks dealt to DataLoader workers in turn; DataLoader collects
batches from its workers in the same turn, so the rank sees the same sequence of batches whatever
the number of workers. Each sample draws its randomness from (seed, epoch, item) alone.

Reads are lazy: a sample reads its two clips' frames and flows (L strided frames each) from Zarr,
which fetches whole chunks of a few frames; nothing else stays in memory between samples but the
open arrays' metadata (a bounded cache). `store` may be a local path or any fsspec URL zarr opens.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from pipeline.data.augment import FRA_ANGLES, NEUTRAL_FACTORS, ViewAugment
from pipeline.data.batch_augment import augment_batch
from pipeline.storage.store import CorruptChunkError, StoredArray, open_stored
from pipeline.storage.tables import read_table
from schemas import store as layout
from schemas.batch import RAW, VIEWS
from schemas.errors import MissingInputError
from schemas.params import DatasetParams
from schemas.tables import CLIP_INDEX

# torchvision's video models (r3d_18 and others) were trained on Kinetics-400 with these.
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipIndex:
    """The clips view 1 may start at, and per video the starts view 2 may snap to."""

    video_ids: np.ndarray  # (N,) str: view 1's video, sorted by (video_id, start)
    starts: np.ndarray  # (N,) int64: view 1's start
    allowed: dict[str, np.ndarray]  # video_id -> sorted starts allowed for either view
    clip_len: int
    stride: int
    source: str = ""

    @classmethod
    def load(cls, path: str | Path, *, sampling: bool = True) -> "ClipIndex":
        """From the sample stage's clips.parquet: the selected clips, or with `sampling` off every
        clip whose frames all exist. Only complete clips are ever used: the tail starts that the
        authors' convention ranks (and may select) have no whole clip."""
        try:
            table = read_table(path)  # its ids name arrays in the store: checked there
        except MissingInputError:
            raise MissingInputError(f"{path}: no clip index; run the sample stage") from None
        missing = set(CLIP_INDEX.names) - set(table.column_names) - {"complete"}  # indexes before it held complete clips only
        if missing:
            raise ValueError(f"{path}: not a clip index, columns {sorted(missing)} are missing")
        frame = table.select(["video_id", "start", "clip_len", "stride", "selected"]).to_pandas()
        if "complete" in table.column_names:
            frame = frame[table.column("complete").to_numpy(zero_copy_only=False)]
        if frame.empty:
            raise ValueError(f"{path}: the clip index is empty (every video was shorter than one clip, or none was sampled)")
        shapes = frame[["clip_len", "stride"]].drop_duplicates()
        if len(shapes) != 1:
            raise ValueError(f"{path}: clips of several shapes {shapes.values.tolist()}; an index has one clip_len and stride")
        if sampling:
            frame = frame[frame.selected]
            if frame.empty:
                raise ValueError(f"{path}: no clip is selected; lower sample.threshold or set dataset.sampling: false")
        frame = frame.sort_values(["video_id", "start"], kind="stable")
        allowed = {vid: group.start.to_numpy(np.int64) for vid, group in frame.groupby("video_id", sort=True)}
        return cls(
            frame.video_id.to_numpy(dtype=object), frame.start.to_numpy(np.int64), allowed,
            int(shapes.clip_len.iloc[0]), int(shapes.stride.iloc[0]), str(path),
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def videos(self) -> list[str]:
        """The videos with at least one allowed start, sorted."""
        return list(self.allowed)

    def snap(self, video_id: str, target: int, rule: str = "nearest") -> int:
        """The allowed start of `video_id` nearest to `target` (ties: the earlier one); with `rule`
        "release", the start the authors' release picks (`release_snap`)."""
        allowed = self.allowed[video_id]
        if rule == "release":
            return release_snap(allowed, target)
        i = int(np.searchsorted(allowed, target))
        if i == 0:
            return int(allowed[0])
        if i == len(allowed):
            return int(allowed[-1])
        before, after = int(allowed[i - 1]), int(allowed[i])
        return before if target - before <= after - target else after


def release_snap(allowed: Sequence[int], target: int) -> int:
    """View 2's start as the MSCL release picks it (mmaction/datasets/pipelines/loading_mscl.py:233-241
    at 0b080e5): starting from 0, each selected start in ascending order replaces the choice when the
    target is strictly nearer to it than the choice is to it. Not the nearest start: with [10, 20, 30],
    12 gives 20, 25 gives 30, and a target at or below 0 or at least twice the last start (-3, 60)
    gives 0, selected or not (50 gives 30)."""
    chosen = 0
    for start in allowed:
        if abs(int(start) - target) < abs(int(start) - chosen):
            chosen = int(start)
    return chosen


def _dist_rank_and_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None or world_size is not None:
        if rank is None or world_size is None:
            raise ValueError("give both rank and world_size, or neither (then torch.distributed decides)")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of size {world_size}")
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class MSCLClips(IterableDataset):
    """Yields one MSCL sample per view-1 clip of the epoch; see schemas/batch.py for its keys."""

    OPEN_ARRAYS = 64  # per process; an open array holds metadata only, never frames

    def __init__(
        self,
        index: ClipIndex | str | Path,
        store: str | Path,
        flow_method: str,
        params: DatasetParams = DatasetParams(),
        *,
        rank: int | None = None,
        world_size: int | None = None,
        with_flow: bool = True,
    ):
        self.with_flow = with_flow  # False: RGB only (the RGB-only baseline reads no flow at all)
        self.index = index if isinstance(index, ClipIndex) else ClipIndex.load(index, sampling=params.sampling)
        self.store = str(store).rstrip("/")
        self.flow_method = flow_method
        self.params = params
        self.rank, self.world_size = _dist_rank_and_size(rank, world_size)
        self.per_video = params.epoch == "per_video"
        self.videos = self.index.videos
        if params.drop_last and self.num_items < self.world_size:
            raise ValueError(f"{self.num_items} {params.epoch.removeprefix('per_')}s cannot fill {self.world_size} ranks with drop_last; "
                             f"set dataset.drop_last: false")  # fmt: skip
        self.augment = ViewAugment(params)
        # (epoch, samples of it already consumed on this rank), in shared memory: DataLoader workers
        # that persist across epochs (and keep their caches) read where the main process has got to.
        self._progress = torch.zeros(2, dtype=torch.int64).share_memory_()
        # Damaged clips replaced, a slot per process (main, workers), in shared memory too.
        self._damaged = torch.zeros(65, dtype=torch.int64).share_memory_()
        self._warned: set[str] = set()
        self.block = 1  # samples per batch (a worker's turn); ClipLoader sets it to the batch size
        self.drop_last_batch = False  # leave out each epoch's short last batch (ClipLoader's drop_last)
        self.continuous = False  # iterate on into the following epochs (ClipLoader's stream)
        self._arrays: OrderedDict[tuple[str, str], zarr.Array] = OrderedDict()
        # Whole arrays as stored, with their conversion to what a read returns, up to cache_mb.
        self._cache: OrderedDict[tuple[str, str], tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]] = OrderedDict()
        self._cache_bytes = 0

    # -- the epoch plan -------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return int(self._progress[0])

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._progress[0] = value

    @property
    def position(self) -> int:
        """Samples of the current epoch already consumed on this rank."""
        return int(self._progress[1])

    @position.setter
    def position(self, value: int) -> None:
        self._progress[1] = value

    @property
    def num_items(self) -> int:
        """Items of an epoch: videos (per_video) or clips of the index (per_clip)."""
        return len(self.videos) if self.per_video else len(self.index)

    @property
    def epoch_length(self) -> int:
        """Samples per epoch on every rank (the same on all)."""
        n, world = self.num_items, self.world_size
        return n // world if self.params.drop_last else math.ceil(n / world)

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """This rank's epoch: the item (a video, or a row of the index) at each position, and which are repeats."""
        n = self.num_items
        order = np.random.default_rng([self.params.seed, epoch]).permutation(n) if self.params.shuffle else np.arange(n)
        total = self.epoch_length * self.world_size
        padding = np.zeros(total, bool)
        if total > n:
            order = np.concatenate([order, order[np.arange(total - n) % n]])
            padding[n:] = True
        return order[: total][self.rank :: self.world_size], padding[self.rank :: self.world_size]

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning (unless it is the current one: then keep the position)."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def advance(self, samples: int) -> None:
        """Count `samples` as consumed; ClipLoader calls this for every batch it hands out."""
        self.position = min(self.position + samples, self.epoch_length)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "position": self.position, "seed": self.params.seed, "rank": self.rank,
            "world_size": self.world_size, "num_items": self.num_items,
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where the saved run stopped. The world size, the seed and the index must
        be the ones it ran with, or the saved position would point into a different sequence."""
        for key, mine in (("world_size", self.world_size), ("seed", self.params.seed), ("num_items", self.num_items)):
            if state[key] != mine:
                raise ValueError(f"cannot resume: the saved dataset state has {key}={state[key]}, this run has {mine}")
        if not 0 <= state["position"] <= self.epoch_length:
            raise ValueError(f"cannot resume: position {state['position']} is outside an epoch of {self.epoch_length}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def __len__(self) -> int:
        """Samples the next pass yields on this rank (the rest of the current epoch)."""
        return self.epoch_length - self.position

    def batch_bounds(self, first: int) -> list[tuple[int, int]]:
        """The batches of an epoch from position `first`: [lo, hi) of `block` positions each, the
        last shorter (or left out with `drop_last_batch`)."""
        length, block = self.epoch_length, self.block
        bounds = [(lo, min(lo + block, length)) for lo in range(first, length, block)]
        if self.drop_last_batch and bounds and bounds[-1][1] - bounds[-1][0] < block:
            bounds.pop()
        return bounds

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Whole batches (schemas/batch.py RAW), from the current epoch and position on: the rest of
        the epoch, or with `continuous` every epoch after it as well, so that the workers run on into
        the next epoch while the main process finishes this one. Batches are dealt to the
        DataLoader's workers in turn, in the order DataLoader collects them, so the sequence is the
        same whatever the number of workers."""
        epoch, first = self.epoch, self.position  # read once: the main process moves them on as batches arrive
        worker = get_worker_info()
        me, workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        turn = 0
        while True:
            items, padding = self.plan(epoch)
            for lo, hi in self.batch_bounds(first):
                if turn % workers == me:
                    yield self.batch(items, padding, range(lo, hi), epoch)
                turn += 1
            if not self.continuous:
                return
            epoch, first = epoch + 1, 0

    def batch(self, items: np.ndarray, padding: np.ndarray, positions: Sequence[int], epoch: int) -> dict[str, Any]:
        """The raw batch of `positions` of this rank's epoch (`plan`)."""
        batch = collate_raw([self._raw_or_replacement(items, int(p), bool(padding[p]), epoch) for p in positions])
        batch["epoch"] = torch.full((len(positions),), epoch, dtype=torch.int64)
        return batch

    REPLACEMENT_TRIES = 16

    def _raw_or_replacement(self, items: np.ndarray, position: int, padding: bool, epoch: int) -> dict[str, Any]:
        """The sample at `position`; if its clip does not read (CorruptChunkError) and
        `on_damaged` is skip, the sample of the next item in the plan that reads, flagged as padding
        (so batches, epochs and ranks keep their lengths), with a warning once per video."""
        try:
            return self.raw_sample(int(items[position]), position, padding, epoch)
        except CorruptChunkError as exc:
            if self.params.on_damaged == "fail":
                raise
            self._note_damaged(exc)
            first = exc
        for offset in range(1, min(len(items), self.REPLACEMENT_TRIES + 1)):
            try:
                return self.raw_sample(int(items[(position + offset) % len(items)]), position, True, epoch)
            except CorruptChunkError as exc:
                self._note_damaged(exc, count=False)
        raise CorruptChunkError(f"{first.args[0]}; and the next {self.REPLACEMENT_TRIES} items of the epoch are damaged too",
                                first.video_id, first.group, first.imported)

    def _note_damaged(self, exc: CorruptChunkError, count: bool = True) -> None:
        if count:
            worker = get_worker_info()
            self._damaged[0 if worker is None else 1 + worker.id % (len(self._damaged) - 1)] += 1
        video = exc.video_id or str(exc)
        if video not in self._warned:
            self._warned.add(video)
            log.warning("skipping damaged clips: %s (dataset.on_damaged: skip)", exc)

    @property
    def damaged_clips(self) -> int:
        """Clips replaced because their data did not read, in every process of this rank so far."""
        return int(self._damaged.sum())

    # -- one sample -----------------------------------------------------------------------------

    def raw_sample(self, item: int, position: int = 0, padding: bool = False, epoch: int | None = None) -> dict[str, Any]:
        """What a worker sends of `item` (a video or a view-1 clip) in `epoch` (the current one by
        default): both views' clips at the stored resolution and every random choice of their
        augmentation (schemas/batch.py RAW). A pure function of seed, epoch, item and whether it is a repeat."""
        video_id, starts, angle, view_seeds = self.draw(item, padding, epoch)
        return self.pack(self._read_stored(video_id, starts), video_id, starts, angle, view_seeds, item, position, padding)

    def pack(self, views: list[tuple[np.ndarray, np.ndarray | None]], video_id: str, starts: tuple[int, int], angle: float,
             view_seeds: list[int], item: int, position: int, padding: bool) -> dict[str, Any]:  # fmt: skip
        """The raw sample of two views read from the store: their augmentation drawn, all as tensors."""
        (start1, start2), height, width = starts, *views[0][0].shape[1:3]
        draws = [self.augment.draw(seed, height, width) for seed in view_seeds]
        order = [d.jitter[0] if d.jitter else (0, 1, 2, 3) for d in draws]
        factors = [[n if f is None else f for f, n in zip(d.jitter[1], NEUTRAL_FACTORS)] if d.jitter else NEUTRAL_FACTORS
                   for d in draws]  # fmt: skip
        sample = {
            "rgb": torch.from_numpy(np.stack([rgb for rgb, _ in views])),
            "size": torch.tensor([height, width], dtype=torch.int64),
            "crop": torch.tensor([d.box for d in draws], dtype=torch.int64),
            "flip": torch.tensor([d.flipped for d in draws]),
            "jitter": torch.tensor([d.jitter is not None for d in draws]),
            "jitter_order": torch.tensor(order, dtype=torch.int64),
            "jitter_factor": torch.tensor(factors, dtype=torch.float32),
            "grayscale": torch.tensor([d.grayscale for d in draws]),
            "blur_sigma": torch.tensor([d.blur_sigma for d in draws], dtype=torch.float32),
            "rotation": torch.tensor(FRA_ANGLES.index(angle)),
            "angle": torch.tensor(angle, dtype=torch.float32),
            "start": torch.tensor([start1, start2], dtype=torch.int64),
            "video_id": video_id,
            "item": torch.tensor(item),
            "position": torch.tensor(position),
            "padding": torch.tensor(padding),
        }
        if self.with_flow:
            sample["flow"] = torch.from_numpy(np.stack([flow for _, flow in views]))
        if not (self.with_flow and self.params.rotation):
            del sample["rotation"]
        assert set(sample) <= set(RAW), set(sample) - set(RAW)
        return sample

    def sample(self, item: int, position: int = 0, padding: bool = False, *, batched: bool | None = None) -> dict[str, Any]:
        """The training sample of `item` (schemas/batch.py SAMPLE): its raw sample augmented on the
        CPU by the pass the trainer runs on its device (`batched`: as `augment_batch` takes it)."""
        batch = augment_batch(collate_raw([self.raw_sample(item, position, padding)]), self.params, batched=batched)
        return {key: value[0] for key, value in batch.items()}

    def draw(self, item: int, padding: bool = False, epoch: int | None = None) -> tuple[str, tuple[int, int], float, list[int]]:
        """The random choices of a sample: its video, the two views' starts, the FRA angle, and a
        seed for each view's augmentation. From (seed, epoch, item, repeat) alone; `epoch`: the
        current one by default."""
        p = self.params
        rng = np.random.default_rng([p.seed, self.epoch if epoch is None else epoch, item, int(padding)])
        if self.per_video:
            video_id = self.videos[item]
            allowed = self.index.allowed[video_id]
            start1 = int(allowed[rng.integers(len(allowed))])
        else:
            video_id, start1 = str(self.index.video_ids[item]), int(self.index.starts[item])
        start2 = self.index.snap(video_id, start1 + int(rng.integers(-p.view2_window, p.view2_window + 1)), p.view2_snap)
        angle = FRA_ANGLES[int(rng.integers(len(FRA_ANGLES)))]
        return video_id, (start1, start2), angle, [int(x) for x in rng.integers(0, 2**63 - 1, size=VIEWS)]

    def read(self, video_id: str, start: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The clip at `start`: frames and flows start + j*stride, j < clip_len, as RGB (T, 3, H, W)
        uint8 and flow (T, 2, H, W) float16 (None without flow), exactly as stored."""
        return self.read_views(video_id, [start])[0]

    def read_views(self, video_id: str, starts: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """`read` of each start; clips of one video that share a chunk are read from the store
        together, so that no chunk is decoded twice for one sample."""
        def channels_first(clip: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2)

        return [(channels_first(rgb), None if flow is None else channels_first(flow)) for rgb, flow in self._read_stored(video_id, starts)]

    def _read_stored(self, video_id: str, starts: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Each start's clip in the stored layout: frames (T, H, W, 3) uint8 and flow (T, H, W, 2)
        float16 pixels (None without flow); views of the cache where it holds the video."""
        spans = [slice(s, s + (self.index.clip_len - 1) * self.index.stride + 1, self.index.stride) for s in starts]
        rgbs = self._read(layout.FRAMES_GROUP, video_id, spans)
        if not self.with_flow:
            return [(rgb, None) for rgb in rgbs]
        flows = self._read(layout.flow_group(self.flow_method), video_id, spans)
        for span, rgb, flow in zip(spans, rgbs, flows, strict=True):
            if len(flow) < len(rgb):
                raise IndexError(
                    f"clip at {span.start} of video {video_id!r} needs flow {span.stop - 1}, the store has fewer "
                    f"flows: the clip index is out of date with the store; re-run the sample stage"
                )
        return list(zip(rgbs, flows, strict=True))

    def _read(self, group: str, video_id: str, spans: Sequence[slice]) -> list[np.ndarray]:
        """Frames `spans` of an array: from the cache of whole arrays when `cache_mb` allows,
        otherwise straight from the store (only the chunks the spans touch, each read once)."""
        key = (group, video_id)
        if key in self._cache:
            self._cache.move_to_end(key)
            whole, to_pixels = self._cache[key]
            return [to_pixels(whole[span]) for span in spans]
        array = self._array(group, video_id)
        budget = self.params.cache_mb * 2**20
        size = int(np.prod(array.shape)) * array.array.dtype.itemsize
        if size > budget:  # only the frames the spans use, each chunk they touch decoded once
            frames = [np.arange(span.start, span.stop, span.step) for span in spans]
            taken = array.to_pixels(array.take(np.concatenate(frames)))
            return np.split(taken, np.cumsum([len(f) for f in frames])[:-1])
        whole = array.take(np.arange(len(array)))  # kept as stored (fixed-point flow: int16), converted per clip
        self._cache[key] = (whole, array.to_pixels)
        self._cache_bytes += whole.nbytes
        while self._cache_bytes > budget:
            _, (dropped, _) = self._cache.popitem(last=False)
            self._cache_bytes -= dropped.nbytes
        return [array.to_pixels(whole[span]) for span in spans]

    def _array(self, group: str, video_id: str) -> StoredArray:
        key = (group, video_id)
        if key in self._arrays:
            self._arrays.move_to_end(key)
            return self._arrays[key]
        stage = "decode" if group == layout.FRAMES_GROUP else "flow"
        array = open_stored(f"{self.store}/{group}/{video_id}", group, video_id, stage)
        self._arrays[key] = array
        if len(self._arrays) > self.OPEN_ARRAYS:
            self._arrays.popitem(last=False)
        return array

    def __getstate__(self) -> dict[str, Any]:
        # Workers open their own arrays: zarr handles hold an event loop's resources.
        state = self.__dict__.copy()
        state["_arrays"] = OrderedDict()
        state["_cache"], state["_cache_bytes"] = OrderedDict(), 0
        return state


def collate_raw(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Raw samples into one batch: tensors stacked on a new first axis (in a worker, straight into
    shared memory, ready to pin), ids listed. Clips of several stored sizes are padded with zeros to
    the largest (`size` keeps each one's own)."""
    sizes = {tuple(sample["size"].tolist()) for sample in samples}
    if len(sizes) > 1:
        height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
        samples = [{**sample, **{key: _pad(sample[key], height, width) for key in ("rgb", "flow") if key in sample}}
                   for sample in samples]  # fmt: skip
    return default_collate(samples)


def _pad(clips: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(V, T, H, W, C) clips padded with zeros at the bottom and right to height x width."""
    out = clips.new_zeros((*clips.shape[:2], height, width, clips.shape[-1]))
    out[:, :, : clips.shape[2], : clips.shape[3]] = clips
    return out


class ClipLoader:
    """A DataLoader over an MSCLClips that keeps the dataset's resume point exact and its workers busy.

    Its workers send whole batches (schemas/batch.py RAW: the clips at the stored resolution and the
    draws of their augmentation; `pipeline.data.feed.DeviceFeed` applies them on the training
    device). One pass over the loader is the rest of the current epoch; after a full pass the dataset
    moves to the next epoch. Underneath runs one stream of batches that goes on from epoch to epoch,
    so at an epoch's end the workers are already reading the next one's first batches: a store
    whose epoch is a few batches keeps every worker busy, and the workers (and their caches of
    videos) live as long as the stream. Every batch handed out advances the dataset's position, so
    `dataset.state_dict()` says what the next batch is, whatever is still prefetched; a pass that
    does not start where the stream stands (after `load_state_dict` or `set_epoch`) starts a new stream.
    """

    def __init__(self, dataset: MSCLClips, batch_size: int, *, num_workers: int = 0, pin_memory: bool = False,
                 worker_nice: int = 0, drop_last: bool = False, **kwargs):  # fmt: skip
        dataset.block = batch_size
        dataset.drop_last_batch = drop_last  # skip a short last batch (batch norm needs more than one sample)
        dataset.continuous = True
        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        init = functools.partial(_lower_priority, worker_nice) if worker_nice and num_workers else None
        # DataLoader draws a base seed for its workers each time it starts; from its own generator that
        # draw leaves the global torch RNG (the trainer's, saved in checkpoints) untouched. Samples
        # never use that seed: their randomness comes from (seed, epoch, item).
        kwargs.setdefault("generator", torch.Generator().manual_seed(dataset.params.seed))
        self.loader = DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                                 worker_init_fn=init, **kwargs)  # fmt: skip
        self._stream: Iterator[dict[str, Any]] | None = None
        self._stream_at: tuple[int, int] | None = None  # (epoch, position) of the stream's next batch

    def __len__(self) -> int:
        """Batches the next pass hands out (the rest of the current epoch)."""
        return len(self.dataset.batch_bounds(self.dataset.position))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        dataset = self.dataset
        epoch = dataset.epoch
        bounds = dataset.batch_bounds(dataset.position)
        if self._stream is None or self._stream_at != (epoch, dataset.position):
            self.close()
            self._stream = iter(self.loader)
        for lo, hi in bounds:
            batch = next(self._stream)
            if int(batch["epoch"][0]) != epoch or int(batch["position"][0]) != lo or len(batch["position"]) != hi - lo:
                raise RuntimeError(f"the loader's stream is out of step: expected epoch {epoch} positions {lo}-{hi}, "
                                   f"got epoch {int(batch['epoch'][0])} from {int(batch['position'][0])}")  # fmt: skip
            dataset.position = hi
            self._stream_at = (epoch, hi)
            yield batch
        dataset.set_epoch(epoch + 1)  # the whole epoch handed out (a dropped short batch counts as consumed)
        self._stream_at = (epoch + 1, 0)

    def close(self) -> None:
        """Stop the stream (and its workers); the next pass starts a new one."""
        self._stream, self._stream_at = None, None


def _lower_priority(nice: int, worker_id: int) -> None:
    os.nice(nice)


def normalise_rgb(rgb: torch.Tensor, mean=KINETICS_MEAN, std=KINETICS_STD) -> torch.Tensor:
    """uint8 RGB (..., 3, T, H, W) -> float (x/255 - mean)/std, on the tensor's device."""
    shape = (3, 1, 1, 1)
    m = torch.tensor(mean, device=rgb.device).view(shape)
    s = torch.tensor(std, device=rgb.device).view(shape)
    return (rgb.float() / 255.0 - m) / s


def to_device(batch: dict[str, Any], device: torch.device | str, *, mean=KINETICS_MEAN, std=KINETICS_STD) -> dict[str, Any]:
    """Move a batch to `device` and only there make it float: RGB to (x/255 - mean)/std, flow to
    float32. Other tensors move as they are; non-tensors are kept."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if not torch.is_tensor(value):
            out[key] = value
            continue
        value = value.to(device, non_blocking=True)
        if key == "rgb":
            value = normalise_rgb(value, mean, std)
        elif key in ("flow", "flow_rot"):
            value = value.float()
        out[key] = value
    return out
