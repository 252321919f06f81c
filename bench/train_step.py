"""Speed of one MSCL training step, side by side in one run: float32 (what CPU training uses)
against bfloat16 autocast on CPU, for MSCL (view 1 against view 2, the authors'), with
`train.symmetric`, and for the RGB-only baseline. The model and batch are the params' (the demo's
compact encoder, batch and crop size); the batch is random. Each configuration also runs its steps
twice from the same state and reports whether the two runs gave the same losses, and whether they
stayed finite: speed is worth nothing if a run cannot be repeated.

    python bench/train_step.py [--params params.yaml] [--steps 12] [--threads N]

Prints JSON: per configuration the median seconds per step, clips/s, the speed-up over float32,
`deterministic` and `finite`.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(args.params)
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
