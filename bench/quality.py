"""Does the trained encoder learn motion? MSCL against the RGB-only baseline and random weights,
over several seeds, on the data a params file points at.

    python bench/quality.py [--params params.yaml] [--seeds 0 1 2] [--set train.symmetric=false ...]

For each seed (train.seed and dataset.seed both set to it): trains MSCL and the RGB-only baseline
with the train stage's code, evaluates both and random weights with the evaluate stage's code, on
the clip index, store and labels of the params' `data` section (run `dvc repro` first). `--set`
overrides params as `dvc exp run -S` does. Runs are kept under --out, keyed by the params, so a
re-run with the same params only prints. Prints one JSON object: per seed and as mean +- std, the
video-level R@1 (the headline), the kNN top-1 and the clip-level R@1 of each model, and the paired
per-seed margins of MSCL over each baseline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from schemas.params import Params, validate  # noqa: E402
from stages import evaluate as evaluate_stage  # noqa: E402
from stages import train as train_stage  # noqa: E402

MODELS = ("mscl", "rgb_only", "random")


def with_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """params as a dict, with each `dotted.key=value` (value read as YAML) applied."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected dotted.key=value")
        *path, last = key.split(".")
        node = raw
        for part in path:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    return raw


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(values), 2), "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0}


def run_seed(params: Params, seed: int, out: Path) -> dict[str, Any]:
    done = out / "eval" / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    params = params.model_copy(update={"train": params.train.model_copy(update={"seed": seed}),
                                       "dataset": params.dataset.model_copy(update={"seed": seed})})  # fmt: skip
    d = params.data
    for method in ("mscl", "rgb_only"):
        print(train_stage.run(params, method, Path(d.sample) / "clips.parquet", d.store, out / "train" / method).text(), file=sys.stderr)
    print(evaluate_stage.run(params, out / "train", d.labels, d.decode, d.store, out / "eval").text(), file=sys.stderr)
    return json.loads(done.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=Path("data/bench/quality"))
    args = parser.parse_args()
    raw = with_overrides(yaml.safe_load(args.params.read_text()), args.overrides)
    params = validate(Params, raw, source=str(args.params))
    key = hashlib.sha256(json.dumps(params.model_dump(mode="json", exclude={"evaluate"}), sort_keys=True).encode()).hexdigest()[:12]
    per_seed = {seed: run_seed(params, seed, args.out / key / f"seed{seed}") for seed in args.seeds}

    def values(model: str, metric: str) -> list[float]:
        return [m[model]["clip"]["R@1"] if metric == "clip_R@1" else m[model][metric] for m in per_seed.values()]

    result: dict[str, Any] = {"params": str(args.params), "overrides": args.overrides, "runs": str(args.out / key), "seeds": args.seeds}
    for metric in ("R@1", "knn_top1", "clip_R@1"):
        block: dict[str, Any] = {model: {**mean_std(values(model, metric)), "per_seed": values(model, metric)} for model in MODELS}
        for baseline in ("rgb_only", "random"):
            margins = [round(a - b, 2) for a, b in zip(values("mscl", metric), values(baseline, metric), strict=True)]
            block[f"mscl_minus_{baseline}"] = {**mean_std(margins), "per_seed": margins, "all_positive": all(m > 0 for m in margins)}
        result["video_R@1" if metric == "R@1" else metric] = block
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
