"""Where view 2 lands under each snapping rule (`dataset.view2_snap`), on a clip index.

    python bench/view2_snap.py [--index data/sample/clips.parquet] [--window 64]

For every video, every allowed view-1 start and every offset in [-window, window] (the draws the
dataset makes, each equally likely), the view-2 start under `nearest` (the pipeline's default) and
`release` (the authors' loop, pipeline/data/dataset.py `release_snap`). Prints JSON: how often the two
differ, how far each lands from its target and from view 1, how often view 2 is view 1's own clip,
and how often `release` lands on a start the index does not allow (its 0). Pure arithmetic on the
index: no data is read but the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.data.dataset import ClipIndex  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=ROOT / "data" / "sample" / "clips.parquet")
    parser.add_argument("--window", type=int, default=64)
    args = parser.parse_args()
    index = ClipIndex.load(args.index)
    offsets = np.arange(-args.window, args.window + 1)
    rows = []  # (start1, target, nearest, release, release allowed)
    for video_id in index.videos:
        allowed = index.allowed[video_id]
        for start1 in allowed.tolist():
            for target in (start1 + offsets).tolist():
                release = index.snap(video_id, target, "release")
                rows.append((start1, target, index.snap(video_id, target), release, release in set(allowed.tolist())))
    start1, target, nearest, release, allowed = (np.array(column) for column in zip(*rows, strict=True))
    out = {
        "index": str(args.index), "videos": len(index.videos), "draws": len(rows), "window": args.window,
        "differ_share": round(float((nearest != release).mean()), 4),
        "release_not_allowed_share": round(float((~allowed).mean()), 4),
    }  # fmt: skip
    for name, start2 in (("nearest", nearest), ("release", release)):
        out[name] = {
            "mean_distance_to_target": round(float(np.abs(start2 - target).mean()), 2),
            "mean_distance_between_views": round(float(np.abs(start2 - start1).mean()), 2),
            "same_clip_as_view1_share": round(float((start2 == start1).mean()), 4),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
