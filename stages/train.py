"""Train stage: MSCL, or the RGB-only MoCo baseline, on the clip index and the store.

    python cli.py train --method mscl          # data/train/mscl
    python cli.py train --method rgb_only      # data/train/rgb_only
    torchrun --nproc_per_node 2 cli.py train   # DDP on 2 processes (gloo on CPU)

Both methods read the same index and params, with the same encoder and budget (epochs, batch size),
so their evaluations compare the methods and nothing else. A killed run resumes from its checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.models.mscl import Method
from pipeline.storage import locks
from pipeline.trainer import TooFewClipsError, train
from schemas.params import Params
from stages.common import Summary


@locks.holding("out", "train", distributed=True)
def run(params: Params, method: Method, index: str | Path, store: str | Path, out: str | Path, *,
        stop_after: int | None = None, progress: bool = True) -> Summary:  # fmt: skip
    summary = Summary(f"train {method}")
    try:
        metrics = train(params.train, params.dataset, method=method, index=index, store=store, flow_method=params.flow.method,
                        out=out, stop_after=stop_after, progress=progress)  # fmt: skip
    except TooFewClipsError as exc:
        raise TooFewClipsError(f"{exc}; lower train.batch_size") from None
    summary.notes += [f"{key}: {value}" for key, value in metrics.items()]
    return summary
