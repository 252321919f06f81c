"""Two trainings on one machine: what each job's thread count costs, side by side in one run.

    python bench/shared_machine.py [--params params.yaml] [--steps 8]

MSCL training steps (the params' model and batch, a random batch, float32 as CPU training runs) in
separate processes: one job alone with the threads `train.threads: 0` gives it (the cores this
process may use, `pipeline.trainer.thread_budget`); two jobs at once each taking every core (what
happened before `train.threads`: each OpenMP pool takes the machine); and two jobs at once each
given its share (`train.threads` = cores / 2, as a user sets it, or as `thread_budget` gives each
job when a scheduler pins it to its own cores). Prints JSON: seconds per step of each job (median
after two warm-up steps) and the slowdown of each shared arm against the job alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def child(params_path: Path, threads: int, steps: int) -> None:
    import torch

    from bench.train_step import random_batch, run_steps
    from schemas.params import load_params

    torch.set_num_threads(threads)
    params = load_params(params_path)
    t, d = params.train, params.dataset
    batch = random_batch(t.batch_size, params.sample.clip_len, d.crop_size, d.flow_input)
    times, _ = run_steps(t, "mscl", batch, False, steps, d.flow_input)
    print(json.dumps({"threads": torch.get_num_threads(), "seconds_per_step": statistics.median(times)}))


def jobs(params_path: Path, threads: list[int], steps: int) -> list[dict]:
    """Start one child per entry of `threads` at once; their results."""
    command = [sys.executable, __file__, "--child", "--params", str(params_path), "--steps", str(steps)]
    procs = [subprocess.Popen([*command, "--threads", str(n)], stdout=subprocess.PIPE, text=True, cwd=ROOT) for n in threads]
    out = []
    for proc in procs:
        stdout, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"a job failed (exit {proc.returncode})")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.params, args.threads, args.steps)
        return
    from pipeline.trainer import thread_budget

    cores = thread_budget(0)
    share = max(1, cores // 2)
    arms = {"one_job_alone": [cores], "two_jobs_each_every_core": [cores, cores], "two_jobs_each_its_share": [share, share]}
    result: dict = {"cores": cores, "affinity": sorted(os.sched_getaffinity(0)), "arms": {}}
    for name, threads in arms.items():
        runs = jobs(args.params, threads, args.steps)
        result["arms"][name] = {"threads_per_job": threads, "seconds_per_step": [round(r["seconds_per_step"], 4) for r in runs]}
    alone = result["arms"]["one_job_alone"]["seconds_per_step"][0]
    for name in ("two_jobs_each_every_core", "two_jobs_each_its_share"):
        arm = result["arms"][name]
        arm["slowdown_vs_alone"] = round(statistics.mean(arm["seconds_per_step"]) / alone, 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
