"""How much the MDS conventions differ on real flow: the authors' (`sample.convention: authors`,
`noise_floor: 0`) against the pipeline's, on every video of a flow stage's output.

    python bench/mds_conventions.py [--data data] [--method tvl1]

Per video, over its complete clips (the only ones training uses): the Spearman correlation of the
two conventions' clip scores, the Jaccard overlap of their selections, and the share of complete
clips each keeps. The pipeline's convention is measured with noise_floor 0 (the convention alone)
and with its default 0.5. Prints one JSON object of means over videos (min and max too).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.sampling.mds import frame_scores  # noqa: E402
from pipeline.storage import store  # noqa: E402
from pipeline.storage.tables import read_table  # noqa: E402
from schemas.params import SampleParams  # noqa: E402
from stages.sample import index_rows  # noqa: E402


def ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    out = np.empty(len(values))
    out[order] = np.arange(len(values))
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def complete_selection(video_id: str, flow: np.ndarray, params: SampleParams) -> tuple[np.ndarray, np.ndarray]:
    scores = frame_scores(flow, block=params.block, noise_floor=params.noise_floor, convention=params.convention)
    rows = [r for r in index_rows(video_id, scores, params) if r["complete"]]
    return np.array([r["score"] for r in rows]), np.array([r["selected"] for r in rows])


def summary(values: list[float]) -> dict[str, float]:
    finite = [v for v in values if np.isfinite(v)]
    return {"mean": round(float(np.mean(finite)), 3), "min": round(float(np.min(finite)), 3), "max": round(float(np.max(finite)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--method", default="tvl1")
    args = parser.parse_args()
    videos = read_table(args.data / "flow" / "videos.parquet").to_pylist()
    authors = SampleParams(convention="authors", noise_floor=0.0)
    variants = {"pipeline_floor_0": SampleParams(noise_floor=0.0), "pipeline_default": SampleParams()}
    measures: dict[str, list[float]] = {}
    for row in videos:
        flow = np.asarray(store.open_flow(args.data / "store.zarr", args.method, row["video_id"])[:], np.float32)
        reference_scores, reference_kept = complete_selection(row["video_id"], flow, authors)
        measures.setdefault("authors_share_of_complete_clips_kept", []).append(reference_kept.mean())
        for name, params in variants.items():
            scores, kept = complete_selection(row["video_id"], flow, params)
            union = (kept | reference_kept).sum()
            measures.setdefault(f"{name}_spearman_vs_authors", []).append(spearman(scores, reference_scores))
            measures.setdefault(f"{name}_jaccard_vs_authors", []).append((kept & reference_kept).sum() / union if union else 1.0)
            measures.setdefault(f"{name}_share_of_complete_clips_kept", []).append(kept.mean())
    result = {"videos": len(videos), "flow": args.method, "frames": int(sum(r["num_pairs"] for r in videos))}
    result.update({name: summary(values) for name, values in measures.items()})
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
