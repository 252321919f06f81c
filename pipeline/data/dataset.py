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

from pipeline.data.augment import FRA_ANGLES, ViewAugment, rotate_vectors
from pipeline.storage.store import CorruptChunkError, StoredArray, open_stored
from pipeline.storage.tables import read_table
from schemas import store as layout
from schemas.batch import SAMPLE, VIEWS
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


def chunk_runs(spans: Sequence[slice], chunk: int) -> list[tuple[int, int, list[int]]]:
    """Spans (start < stop, step >= 1) grouped where their chunks of `chunk` frames overlap: for
    each group, the frames [lo, hi) one read covers and the indices of its spans. Spans in
    different chunks stay apart, so no chunk between them is read for nothing; so does a span whose
    step skips whole chunks."""
    dense = all((span.step or 1) <= chunk for span in spans)
    runs: list[tuple[int, int, list[int]]] = []
    for i in sorted(range(len(spans)), key=lambda i: spans[i].start):
        lo, hi = spans[i].start, spans[i].stop
        if dense and runs and lo // chunk <= (runs[-1][1] - 1) // chunk:
            run_lo, run_hi, members = runs[-1]
            runs[-1] = (run_lo, max(run_hi, hi), members + [i])
        else:
            runs.append((lo, hi, [i]))
    return runs


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
        self.block = 1  # samples per worker turn; ClipLoader sets it to the batch size
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

    def __iter__(self) -> Iterator[dict[str, Any]]:
        items, padding = self.plan(self.epoch)
        first = self.position  # read once: with persistent workers the main process moves it on as batches arrive
        positions = np.arange(first, len(items))
        worker = get_worker_info()
        if worker is not None:
            turn = (positions - first) // self.block % worker.num_workers
            positions = positions[turn == worker.id]
        for position in positions:
            yield self._sample_or_replacement(items, int(position), bool(padding[position]))

    REPLACEMENT_TRIES = 16

    def _sample_or_replacement(self, items: np.ndarray, position: int, padding: bool) -> dict[str, Any]:
        """The sample at `position`; if its clip does not read (CorruptChunkError) and
        `on_damaged` is skip, the sample of the next item in the plan that reads, flagged as padding
        (so batches, epochs and ranks keep their lengths), with a warning once per video."""
        try:
            return self.sample(int(items[position]), position, padding)
        except CorruptChunkError as exc:
            if self.params.on_damaged == "fail":
                raise
            self._note_damaged(exc)
            first = exc
        for offset in range(1, min(len(items), self.REPLACEMENT_TRIES + 1)):
            try:
                return self.sample(int(items[(position + offset) % len(items)]), position, True)
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

    def sample(self, item: int, position: int = 0, padding: bool = False) -> dict[str, Any]:
        """The sample of `item` (a video or a view-1 clip) in the current epoch (a pure function of
        seed, epoch, item and whether it is a repeat)."""
        p = self.params
        video_id, (start1, start2), angle, view_seeds = self.draw(item, padding)
        rgbs, flows, crops, flips = [], [], [], []
        for (rgb, flow), seed in zip(self.read_views(video_id, (start1, start2)), view_seeds, strict=True):
            rgb, flow, geometry = self.augment(rgb, flow, seed)
            rgbs.append(rgb.permute(1, 0, 2, 3))  # (T, C, H, W) -> (C, T, H, W)
            if flow is not None:
                flows.append(flow.permute(1, 0, 2, 3))
            crops.append((geometry.top, geometry.left, geometry.height, geometry.width))
            flips.append(geometry.flipped)
        sample = {
            "rgb": torch.stack(rgbs).contiguous(),
            "angle": torch.tensor(angle, dtype=torch.float32),
            "start": torch.tensor([start1, start2], dtype=torch.int64),
            "crop": torch.tensor(crops, dtype=torch.int64),
            "flip": torch.tensor(flips),
            "video_id": video_id,
            "item": torch.tensor(item),
            "position": torch.tensor(position),
            "padding": torch.tensor(padding),
        }
        if self.with_flow:
            flow = torch.stack(flows)
            sample["flow"] = flow.to(torch.float16).contiguous()
        if self.with_flow and p.rotation:  # vectors live on axis 1 of (V, 2, T, H, W)
            sample["flow_rot"] = rotate_vectors(flow.transpose(1, 2), angle).transpose(1, 2).to(torch.float16).contiguous()
        assert set(sample) <= set(SAMPLE), set(sample) - set(SAMPLE)
        return sample

    def draw(self, item: int, padding: bool = False) -> tuple[str, tuple[int, int], float, list[int]]:
        """The random choices of a sample: its video, the two views' starts, the FRA angle, and a
        seed for each view's augmentation. From (seed, epoch, item, repeat) alone."""
        p = self.params
        rng = np.random.default_rng([p.seed, self.epoch, item, int(padding)])
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
        spans = [slice(s, s + (self.index.clip_len - 1) * self.index.stride + 1, self.index.stride) for s in starts]
        rgbs = self._read(layout.FRAMES_GROUP, video_id, spans)
        if not self.with_flow:
            return [(torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2), None) for rgb in rgbs]
        flows = self._read(layout.flow_group(self.flow_method), video_id, spans)
        out = []
        for span, rgb, flow in zip(spans, rgbs, flows, strict=True):
            if len(flow) < len(rgb):
                raise IndexError(
                    f"clip at {span.start} of video {video_id!r} needs flow {span.stop - 1}, the store has fewer "
                    f"flows: the clip index is out of date with the store; re-run the sample stage"
                )
            rgb = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2)
            out.append((rgb, torch.from_numpy(np.ascontiguousarray(flow)).permute(0, 3, 1, 2)))
        return out

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
        if size > budget:
            out: list[np.ndarray] = [np.empty(0)] * len(spans)
            for lo, hi, members in chunk_runs(spans, array.chunks[0]):
                block = array.stored(slice(lo, hi))
                for i in members:
                    out[i] = array.to_pixels(block[spans[i].start - lo : spans[i].stop - lo : spans[i].step])
            return out
        whole = array.stored(slice(None))  # kept as stored (fixed-point flow: int16), converted per clip
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


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch sample dicts: tensors stacked on a new first axis (dtypes kept, so uint8 and float16
    travel as such; in a worker the stacked tensor is in shared memory, ready to pin), ids listed."""
    return default_collate(samples)


class ClipLoader:
    """A DataLoader over an MSCLClips that keeps the dataset's resume point exact.

    Every batch it hands out advances the dataset's position, so `dataset.state_dict()` after a step
    says what the next batch is, whatever is still prefetched in the workers. One pass over the
    loader is the rest of the current epoch; after a full pass the dataset moves to the next epoch.
    """

    def __init__(self, dataset: MSCLClips, batch_size: int, *, num_workers: int = 0, pin_memory: bool = False,
                 worker_nice: int = 0, drop_last: bool = False, **kwargs):  # fmt: skip
        dataset.block = batch_size
        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last  # skip a short last batch (batch norm needs more than one sample)
        init = functools.partial(_lower_priority, worker_nice) if worker_nice and num_workers else None
        # DataLoader draws a base seed for its workers each time it starts a pass; from its own generator
        # that draw leaves the global torch RNG (the trainer's, saved in checkpoints) untouched. Samples
        # never use that seed: their randomness comes from (seed, epoch, item).
        kwargs.setdefault("generator", torch.Generator().manual_seed(dataset.params.seed))
        # Workers persist across epochs, so their caches of videos do too (an epoch of a small dataset
        # is a few batches: fresh workers each epoch would read every video again); they learn the
        # epoch and position from the dataset's shared progress when each pass begins.
        kwargs.setdefault("persistent_workers", num_workers > 0)
        self.loader = DataLoader(
            dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, collate_fn=collate,
            worker_init_fn=init, **kwargs,
        )  # fmt: skip

    def __len__(self) -> int:
        rounding = math.floor if self.drop_last else math.ceil
        return rounding(len(self.dataset) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self.dataset.epoch
        for batch in self.loader:
            self.dataset.advance(len(batch["position"]))
            if self.drop_last and len(batch["position"]) < self.batch_size:
                continue  # only ever the last one: counted as consumed, not handed out
            yield batch
        if self.dataset.epoch == epoch and self.dataset.position >= self.dataset.epoch_length:
            self.dataset.set_epoch(epoch + 1)


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
