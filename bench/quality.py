"""Does the trained encoder learn motion? MSCL against the RGB-only baseline and random weights,
over several seeds, on the demo or on a held-out variant of it.

    python bench/quality.py                                 # the data params.yaml points at (after dvc repro)
    python bench/quality.py --variant heldout               # bench/variants/heldout.yaml, built here first
    python bench/quality.py --seeds 0 1 2 --set train.key_momentum=0.9

A variant (`bench/variants/<name>.yaml`, or a path) overrides params the way `--set` does; its data
(make_demo, probe, decode, flow, sample) is built with the stages' own code under
`--out/<variant>/data`, resumably; so is the demo's when `--set` changes a param of those stages
(under `--out/params_data-<key>/data`, keyed by those settings: the data `dvc repro` built do not
follow them; a variant with such a --set likewise builds under `--out/<variant>-<key>/data`). For each seed (train.seed and dataset.seed both set to it) the
train stage trains MSCL and the RGB-only baseline, and the evaluate stage scores them, random
weights, MSCL's flow encoder on the flow and a non-learned motion descriptor. Runs are kept under
`--out/<variant>/`, keyed by the params each depends on (the RGB-only baseline's by fewer, so an
MSCL ablation reuses it), so a repeated command only prints.

Prints one JSON object, also written to quality.json beside the runs, with a plot (losses.png):
per seed and as mean +- std, video-level R@1 (the headline), kNN top-1, clip-level R@1 and the
linear probe's top-1 (`linear_probe_top1`, with `evaluate.linear_probe`) of each model, the paired per-seed margins of MSCL over each baseline, the diagnostics, and each loss's
last-epoch value against its chance value.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.storage.tables import table_metadata  # noqa: E402
from schemas.params import Params, validate  # noqa: E402
from stages import decode as decode_stage  # noqa: E402
from stages import evaluate as evaluate_stage  # noqa: E402
from stages import flow as flow_stage  # noqa: E402
from stages import make_demo as make_demo_stage  # noqa: E402
from stages import probe as probe_stage  # noqa: E402
from stages import sample as sample_stage  # noqa: E402
from stages import train as train_stage  # noqa: E402

MODELS = ("mscl", "rgb_only", "random")
DIAGNOSTICS = ("flow_encoder", "flow_encoder_random", "motion_histogram")
VARIANTS = Path(__file__).resolve().parent / "variants"


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


def merge(raw: dict[str, Any], variant: dict[str, Any]) -> dict[str, Any]:
    """`variant`'s sections laid over `raw`'s, key by key."""
    for key, value in variant.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            merge(raw[key], value)
        else:
            raw[key] = value
    return raw


def variant_file(name: str) -> Path:
    path = Path(name) if name.endswith((".yaml", ".yml")) else VARIANTS / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in VARIANTS.glob("*.yaml")))
        raise SystemExit(f"--variant {name}: no file {path}; known variants: {known}")
    return path


def variant_data(raw: dict[str, Any], root: Path) -> dict[str, Any]:
    """Every data location of a variant under `root`, the videos and labels made by make_demo."""
    demo = root / "demo"
    places = {"demo": demo, "videos": demo / "videos", "labels": demo / "labels.parquet", "manifest": root / "manifest",
              "store": root / "store.zarr", "decode": root / "decode", "flow": root / "flow", "sample": root / "sample",
              "train": root / "train", "evaluate": root / "evaluate"}  # fmt: skip
    raw["data"] = {key: str(value) for key, value in places.items()}
    return raw


DATA_SECTIONS = ("make_demo", "probe", "decode", "flow", "sample")  # what build_variant's stages read


def build_variant(params: Params, root: Path) -> None:
    """The variant's videos, frames, flow and clip index, through the stages (each skips finished
    work); a stamp of the params they read lets a later run skip the stages altogether."""
    d = params.data
    stamp = root / "built.json"
    wanted = {section: getattr(params, section).model_dump(mode="json") for section in DATA_SECTIONS}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return
    stamp.unlink(missing_ok=True)
    if not Path(d.labels).is_file() or table_metadata(d.labels).get("params") != wanted["make_demo"]:
        print(make_demo_stage.run(params.make_demo, d.demo).text(), file=sys.stderr)
    for summary in (
        lambda: probe_stage.run(params.probe, d.videos, d.manifest),
        lambda: decode_stage.run(params.decode, d.manifest, d.videos, d.store, d.decode),
        lambda: flow_stage.run(params.flow, d.decode, d.store, d.flow, videos_root=d.videos),
        lambda: sample_stage.run(params.sample, d.flow, d.store, d.sample),
    ):
        print(summary().text(), file=sys.stderr)
    stamp.write_text(json.dumps(wanted))


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(values), 2), "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0}


# What the RGB-only baseline never reads: its runs are shared by every MSCL setting that differs only here.
MSCL_ONLY = {"train": {"weights", "lmcl", "fra", "cross_modal", "flow_width_ratio", "flow_blocks", "local_dim", "lmcl_temperature"},
             "dataset": {"flow_norm", "flow_bound", "flow_input", "flow_camera", "rotation"}}  # fmt: skip


def run_key(params: Params, method: str | None = None) -> str:
    """A short hash of the params a run depends on: all but evaluate's, less MSCL_ONLY for rgb_only."""
    plain = params.model_dump(mode="json", exclude={"evaluate"})
    if method == "rgb_only":
        plain = {section: {k: v for k, v in values.items() if k not in MSCL_ONLY.get(section, ())} if isinstance(values, dict) else values
                 for section, values in plain.items()}  # fmt: skip
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:12]


def seeded(params: Params, seed: int) -> Params:
    return params.model_copy(update={"train": params.train.model_copy(update={"seed": seed}),
                                     "dataset": params.dataset.model_copy(update={"seed": seed})})  # fmt: skip


def run_seed(params: Params, root: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """Train both methods and evaluate, skipping what an earlier run already did; the metrics and
    each method's run folder."""
    d = params.data
    trained = {method: root / "train" / f"{method}-{run_key(params, method)}" for method in ("mscl", "rgb_only")}
    for method, out in trained.items():
        if not (out / "metrics.json").is_file():
            started = time.perf_counter()
            print(train_stage.run(params, method, Path(d.sample) / "clips.parquet", d.store, out).text(), file=sys.stderr)
            (out / "seconds").write_text(f"{time.perf_counter() - started:.1f}\n")
    scoring = hashlib.sha256(json.dumps(params.evaluate.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:8]
    evaluation = root / "eval" / f"{run_key(params)}-{scoring}"  # re-scored when evaluate's params change
    if not (evaluation / "metrics.json").is_file():
        (evaluation / "train").mkdir(parents=True, exist_ok=True)
        for method, out in trained.items():  # the layout the evaluate stage reads: train/<method>/
            link = evaluation / "train" / method
            link.unlink(missing_ok=True)
            link.symlink_to(out.resolve(), target_is_directory=True)
        print(evaluate_stage.run(params, evaluation / "train", d.labels, d.decode, d.store, evaluation).text(), file=sys.stderr)
    return json.loads((evaluation / "metrics.json").read_text()), trained


def read_losses(path: Path) -> dict[str, list[float]]:
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    return {key: [float(row[key]) for row in rows] for key in rows[0] if key != "epoch" and rows[0][key] != ""}


def summarise(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean +- std per model and metric, and MSCL's paired margins over each baseline."""

    def values(block: str, metric: str) -> list[float]:
        where = {"clip_R@1": ("clip", "R@1"), "linear_probe_top1": ("linear_probe", "top1")}
        return [m[block][where[metric][0]][where[metric][1]] if metric in where else m[block][metric] for m in per_seed.values()]

    result: dict[str, Any] = {}
    probe = all("linear_probe" in m[model] for m in per_seed.values() for model in MODELS)
    for metric in ("R@1", "knn_top1", "clip_R@1") + (("linear_probe_top1",) if probe else ()):
        block: dict[str, Any] = {model: {**mean_std(values(model, metric)), "per_seed": values(model, metric)} for model in MODELS}
        for baseline in ("rgb_only", "random"):
            margins = [round(a - b, 2) for a, b in zip(values("mscl", metric), values(baseline, metric), strict=True)]
            block[f"mscl_minus_{baseline}"] = {**mean_std(margins), "per_seed": margins, "all_positive": all(m > 0 for m in margins)}
        result["video_R@1" if metric == "R@1" else metric] = block
    if all("diagnostics" in m for m in per_seed.values()):
        result["diagnostics"] = {
            name: {metric: {**mean_std(v := [m["diagnostics"][name][metric] for m in per_seed.values()]), "per_seed": v}
                   for metric in ("R@1", "knn_top1")}
            for name in DIAGNOSTICS if all(name in m["diagnostics"] for m in per_seed.values())
        }  # fmt: skip
    return result


def loss_report(runs: list[dict[str, Path]]) -> dict[str, Any]:
    """Per method and loss part: the last epoch's mean over seeds against the part's chance value."""
    report: dict[str, Any] = {}
    for method in ("mscl", "rgb_only"):
        metrics = [json.loads((run[method] / "metrics.json").read_text()) for run in runs]
        chance = metrics[0].get("chance", {})
        report[method] = {
            part: {"last_epoch": mean_std([m[f"last_epoch_{part}"] for m in metrics]), "chance": value}
            for part, value in chance.items() if value > 0
        }  # fmt: skip
        seconds = [float((run[method] / "seconds").read_text()) for run in runs if (run[method] / "seconds").is_file()]
        if seconds:
            report[method]["train_seconds"] = mean_std(seconds)
    return report


def plot_losses(runs: list[dict[str, Path]], seeds: list[int], title: str, out: Path) -> None:
    """One panel per loss part: each seed's curve (smoothed) and the part's chance value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {method: [read_losses(run[method] / "losses.csv") for run in runs] for method in ("mscl", "rgb_only")}
    chance = {method: json.loads((runs[0][method] / "metrics.json").read_text()).get("chance", {}) for method in curves}
    panels = [(method, part) for method in curves for part, value in chance[method].items() if value > 0]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3), squeeze=False)
    for axis, (method, part) in zip(axes[0], panels, strict=True):
        for seed, log in zip(seeds, curves[method], strict=True):
            window = max(1, len(log[part]) // 30)
            smooth = [statistics.fmean(log[part][max(0, i - window + 1) : i + 1]) for i in range(len(log[part]))]
            axis.plot(log["step"], smooth, lw=1, label=f"seed {seed}")
        axis.axhline(chance[method][part], color="k", ls="--", lw=1, label="chance")
        axis.set_title(f"{method}: {part}", fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--variant", default=None, help="a file of bench/variants/ (by name) or a YAML path; default: the params' own data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=Path("data/bench/quality"))
    args = parser.parse_args()
    if len(args.seeds) < 3:
        print("note: fewer than 3 seeds; a mean +- std needs at least 3 to mean anything", file=sys.stderr)
    raw = yaml.safe_load(args.params.read_text())
    # A --set of a data stage's param gets data of its own, in a folder named by those settings, so two
    # such runs (or one and the variant's plain data) never rebuild each other's data in place.
    data_sets = sorted(item for item in args.overrides if item.split(".", 1)[0] in DATA_SECTIONS)
    suffix = "-" + hashlib.sha256("\n".join(data_sets).encode()).hexdigest()[:8] if data_sets else ""
    name = "params"
    if args.variant:
        path = variant_file(args.variant)
        name = path.stem + suffix
        raw = variant_data(merge(raw, yaml.safe_load(path.read_text()) or {}), args.out / name / "data")
    elif data_sets:
        # The data `dvc repro` built do not follow a --set of their params: build them afresh instead.
        name = "params_data" + suffix
        raw = variant_data(raw, args.out / name / "data")
    raw = with_overrides(raw, args.overrides)
    params = validate(Params, raw, source=f"{args.params} + {args.variant or 'no variant'} + --set")
    if params.dataset.flip > 0 and params.make_demo.flip_exchanged() and args.variant:
        print(f"warning: {params.make_demo.flip_exchanged()} are exchanged by a horizontal flip, and dataset.flip is "
              f"{params.dataset.flip}: set dataset.flip: 0 to tell them apart", file=sys.stderr)  # fmt: skip
    if name != "params":
        build_variant(params, args.out / name / "data")
    root = args.out / name
    done = {seed: run_seed(seeded(params, seed), root) for seed in args.seeds}
    per_seed = {seed: metrics for seed, (metrics, _) in done.items()}
    runs = [trained for _, trained in done.values()]
    report = root / "results" / run_key(seeded(params, 0))
    report.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"variant": name, "params": str(args.params), "overrides": args.overrides, "report": str(report),
                              "seeds": args.seeds, **summarise(per_seed), "losses": loss_report(runs)}  # fmt: skip
    (report / "quality.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_losses(runs, args.seeds, f"{name} {' '.join(args.overrides)}", report / "losses.png")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
