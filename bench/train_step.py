"""Speed of one MSCL training step, side by side in one run: float32 (what CPU training uses)
against bfloat16 autocast on CPU, for MSCL (view 1 against view 2, the authors'), with
`train.symmetric`, and for the RGB-only baseline. The model and batch are the params' (the demo's
compact encoder, batch and crop size); the batch is random. Each configuration also runs its steps
twice from the same state and reports whether the two runs gave the same losses, and whether they
stayed finite: speed is worth nothing if a run cannot be repeated.

    python bench/train_step.py [--params params.yaml] [--steps 12] [--threads N]

Prints JSON: per configuration the median seconds per step, clips/s, the speed-up over float32,
`deterministic` and `finite`. With `--device cuda` instead: the step at the paper's scale under
cuDNN's deterministic algorithms (the trainer's default), benchmark mode, channels-last weights and
torch.compile, each against the deterministic one (`device_variants`).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.data.dataset import to_device  # noqa: E402
from pipeline.models.mscl import MSCL  # noqa: E402
from schemas.params import load_params  # noqa: E402


# The paper's model at the scale the GPU measurements use: torchvision's r3d_18 for RGB, the flow
# encoder at a quarter of its width, queue 4096 (bench/loader.py uses it too).
PAPER_MODEL = {"encoder": "r3d_18", "flow_width_ratio": 0.25, "flow_blocks": (2, 2, 2, 2), "queue_size": 4096,
               "head_bn": False, "local_dim": 128}  # fmt: skip


def random_batch(batch: int, clip_len: int, size: int, flow_input: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (batch, 2, 3, clip_len, size, size), generator=generator, dtype=torch.uint8)
    flow = torch.randn(batch, 2, 2, clip_len, size, size, generator=generator).to(torch.float16)
    return to_device({"rgb": rgb, "flow": flow, "flow_rot": flow.flip(2)}, "cpu")


def run_steps(params, method: str, batch: dict[str, torch.Tensor], amp: bool, steps: int, flow_input: str) -> tuple[list[float], list[float]]:
    """(seconds of each step after two warm-up steps, the loss of every step), from seed 0."""
    torch.manual_seed(0)
    model = MSCL(params, method, flow_input=flow_input).train()
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    times, losses = [], []
    for step in range(steps + 2):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss, _, keys = model(batch, 0.99)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        model.enqueue(keys)
        losses.append(float(loss.detach()))
        if step >= 2:
            times.append(time.perf_counter() - started)
    return times, losses


def device_variants(train, dataset, device: str, steps: int, variants: list[str]) -> dict:
    """The trainer's step on `device` (float16 autocast and a gradient scaler on CUDA) under each of
    `variants`: `deterministic` (cuDNN's deterministic algorithms: what `train.deterministic: true`
    sets), `benchmark` (cuDNN picks the fastest for each shape), `benchmark_channels_last` (the
    weights as channels-last 3-D), `benchmark_compile` (each encoder through torch.compile), for
    MSCL and RGB-only, on a random batch already on the device. Median seconds per step."""
    from pipeline.trainer import make_deterministic

    device = torch.device(device)
    cuda = device.type == "cuda"
    generator = torch.Generator().manual_seed(0)
    shape = (train.batch_size, 2, 3, 8, dataset.crop_size, dataset.crop_size)
    rgb = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    flow = torch.randn(train.batch_size, 2, 2, 8, dataset.crop_size, dataset.crop_size, generator=generator)
    batch = to_device({"rgb": rgb, "flow": flow, "flow_rot": flow.flip(2)}, device)
    out: dict = {"device": str(device), "batch": train.batch_size, "crop": dataset.crop_size, "encoder": train.encoder}
    for method in ("mscl", "rgb_only"):
        for variant in variants:
            make_deterministic(device, variant == "deterministic")
            torch.manual_seed(0)
            model = MSCL(train, method, flow_input=dataset.flow_input).to(device).train()
            if variant.endswith("channels_last"):
                model = model.to(memory_format=torch.channels_last_3d)
            if variant.endswith("compile"):
                for name in ("rgb", "rgb_key") + (("flow", "flow_key") if method == "mscl" else ()):
                    setattr(model, name, torch.compile(getattr(model, name)))
            optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
            scaler = torch.amp.GradScaler(device.type, enabled=cuda)
            times, losses = [], []
            try:
                for step in range(steps + 3):
                    started = time.perf_counter()
                    with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
                        loss, _, keys = model(batch, 0.99)
                    optimiser.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimiser)
                    scaler.update()
                    model.enqueue(keys)
                    losses.append(loss.detach())
                    if cuda:
                        torch.cuda.synchronize()
                    if step >= 3:
                        times.append(time.perf_counter() - started)
            except Exception as exc:  # a variant this torch or device cannot run: say so, go on
                out[f"{method}_{variant}"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                continue
            seconds = statistics.median(times)
            out[f"{method}_{variant}"] = {"seconds_per_step": round(seconds, 4), "clips_per_s": round(train.batch_size / seconds, 1),
                                          "finite": bool(torch.stack(losses).isfinite().all())}  # fmt: skip
            if cuda:
                out[f"{method}_{variant}"]["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                torch.cuda.reset_peak_memory_stats()
            print(json.dumps({f"{method}_{variant}": out[f"{method}_{variant}"]}), file=sys.stderr, flush=True)
        base = out.get(f"{method}_deterministic", {}).get("seconds_per_step")
        for variant in variants:
            row = out[f"{method}_{variant}"]
            if base and "seconds_per_step" in row:
                row["speedup_over_deterministic"] = round(base / row["seconds_per_step"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default=None, help="run the device variants here instead (cuda, or cpu to try them)")
    parser.add_argument("--scale", choices=["paper", "params"], default="paper", help="with --device: the paper's model and batch, or the params'")
    parser.add_argument("--variants", nargs="+", default=["deterministic", "benchmark", "benchmark_channels_last", "benchmark_compile"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(args.params)
    if args.device:
        train, dataset = params.train, params.dataset
        if args.scale == "paper":  # r3d_18, batch 128, 112 px, the flow encoder at a quarter width, queue 4096
            train = train.model_copy(update={**PAPER_MODEL, "batch_size": 128})
            dataset = dataset.model_copy(update={"crop_size": 112})
        print(json.dumps(device_variants(train, dataset, args.device, args.steps, args.variants), indent=2))
        return
    t, d = params.train, params.dataset
    batch = random_batch(t.batch_size, params.sample.clip_len, d.crop_size, d.flow_input)
    configs = {
        "mscl_float32": ("mscl", False, False),
        "mscl_bfloat16": ("mscl", True, False),
        "mscl_symmetric_float32": ("mscl", False, True),
        "mscl_symmetric_bfloat16": ("mscl", True, True),
        "rgb_only_float32": ("rgb_only", False, False),
        "rgb_only_bfloat16": ("rgb_only", True, False),
    }
    result: dict = {"batch": t.batch_size, "crop": d.crop_size, "clip_len": params.sample.clip_len, "encoder": t.encoder,
                    "width": t.width, "threads": torch.get_num_threads(), "configs": {}}  # fmt: skip
    for name, (method, amp, symmetric) in configs.items():
        params = t.model_copy(update={"symmetric": symmetric})
        times, first = run_steps(params, method, batch, amp, args.steps, d.flow_input)
        _, second = run_steps(params, method, batch, amp, args.steps, d.flow_input)
        seconds = statistics.median(times)
        result["configs"][name] = {"seconds_per_step": round(seconds, 4), "clips_per_s": round(t.batch_size / seconds, 1),
                                   "deterministic": first == second, "finite": all(math.isfinite(x) for x in first + second)}  # fmt: skip
    for name, row in result["configs"].items():
        plain = result["configs"][name.replace("bfloat16", "float32")]["seconds_per_step"]
        row["speedup_over_float32"] = round(plain / row["seconds_per_step"], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
