"""Batches onto the training device, augmented there, one step ahead of the step that uses them.

    loader = ClipLoader(dataset, batch_size=128, num_workers=12, pin_memory=True)
    feed = DeviceFeed(loader, torch.device("cuda"))
    for batch in feed:                          # one epoch, as a pass over the loader
        loss = model(batch)                     # rgb normalised float, flow float32, on the device
        ...
        checkpoint["dataset"] = feed.state_dict()   # where the next batch the step has not seen starts

While the step runs on batch i, batch i + 1 is already copied from pinned memory on a side CUDA
stream and augmented there (`augment_batch`), so the copy and the augmentation overlap the step's
kernels; the step's stream waits for batch i's event only. On the CPU the same code runs in order.
Because the feed pulls a batch ahead, the dataset's own position is one batch ahead of the steps:
`state_dict()` is the dataset's state as of the last batch handed out, the one a checkpoint saves.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from pipeline.data.batch_augment import augment_batch, geometry
from pipeline.data.dataset import KINETICS_MEAN, KINETICS_STD, ClipLoader, normalise_rgb


class DeviceFeed:
    """Training batches on `device`: the loader's raw batches, moved, augmented and made float."""

    def __init__(self, loader: ClipLoader, device: torch.device | str, mean=KINETICS_MEAN, std=KINETICS_STD):
        self.loader = loader
        self.device = torch.device(device)
        self.params = loader.dataset.params
        self.mean, self.std = mean, std
        self._state: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.loader)

    def state_dict(self) -> dict[str, Any]:
        """The dataset's state after the last batch this feed handed out (before any, the dataset's own)."""
        return dict(self._state) if self._state is not None else self.loader.dataset.state_dict()

    def close(self) -> None:
        self.loader.close()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._state = None
        cuda = self.device.type == "cuda"
        side = torch.cuda.Stream(self.device) if cuda else None
        ahead = None
        for raw in self.loader:
            prepared = (self._prepare(raw, side), self.loader.dataset.state_dict())
            if ahead is not None:
                yield self._hand_out(*ahead)
            ahead = prepared
        if ahead is not None:
            yield self._hand_out(*ahead)

    def _prepare(self, raw: dict[str, Any], side: torch.cuda.Stream | None):
        """Copy and augment `raw` (on the side stream on CUDA); returns the batch and its ready event."""
        if side is None:  # on the CPU: torch's own resize, view by view (augment_batch's default there)
            return self._augment(raw, None), None
        # The resize weights come from the crop boxes, in the CPU's copy of the batch: made here, moved with it.
        geo = geometry(raw["crop"].flatten(0, 1), raw["flip"].flatten(), self.params.crop_size)
        with torch.cuda.stream(side):
            moved = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in raw.items()}
            geo = {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in geo.items()}
            batch = self._augment(moved, geo)
            ready = torch.cuda.Event()
            ready.record(side)
        return batch, ready

    def _augment(self, raw: dict[str, Any], geo: dict[str, torch.Tensor] | None) -> dict[str, Any]:
        batch = augment_batch(raw, self.params, geo)
        batch["rgb"] = normalise_rgb(batch["rgb"], self.mean, self.std)
        return batch

    def _hand_out(self, prepared, state: dict[str, Any]) -> dict[str, Any]:
        batch, ready = prepared
        if ready is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(ready)
            for value in batch.values():
                if torch.is_tensor(value) and value.is_cuda:
                    value.record_stream(stream)  # made on the side stream, used on this one
        self._state = state
        return batch
