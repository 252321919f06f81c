"""The MSCL trainer: build, resume, loop, finish, each a function that reads top to bottom.

SGD with momentum and weight decay; learning rate warmed up linearly then cosine-annealed to 0;
gradients clipped; mixed precision on CUDA; the key encoders' momentum cosine-annealed to 1.
Checkpoints (every `checkpoint_every` steps and on the last) hold everything a killed run needs to
go on exactly: model with key encoders and queues, optimiser, schedule, grad scaler, step, every
rank's random state (torch's CPU and CUDA generators and the model's shuffled-BN generator), the
dataset's position and the config; they load with `torch.load(..., weights_only=True)`. On CUDA,
cuDNN is set to deterministic algorithms, so a resumed run repeats the steps it would have taken.
A finished run leaves these four files, replaced together with its checkpoint's removal (one commit,
pipeline/storage/durable.py: a run killed meanwhile leaves the old set or the new, never a mix):

    model.pt        the whole MSCL state dict (query and key encoders, heads, queues) and config
    rgb_encoder.pt  the RGB backbone's state dict alone (with r3d_18: loads strictly into
                    torchvision's r3d_18; its fc is torchvision's untrained initial one)
    losses.csv      per step: epoch, lr, key momentum, total and every loss part (DVC plots)
    metrics.json    final losses, each loss's chance value, steps, clips/s (DVC metrics)

Under `torchrun` every rank trains on its shard of each epoch (DDP over gloo on CPU, NCCL on CUDA),
the queues take every rank's keys, and rank 0 writes the files.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pipeline.data.dataset import ClipLoader, MSCLClips
from pipeline.data.feed import DeviceFeed
from pipeline.models.mscl import MSCL, Method, key_momentum
from pipeline.storage.tables import FileSet, atomic_write_bytes, recover, sweep
from schemas.errors import UserError
from schemas.params import DatasetParams, TrainParams

CHECKPOINT = "checkpoint.pt"
LOSS_PARTS = ("rgb", "flow", "flow_rot", "cross", "cross_rot", "lmcl")
LOG_FIELDS = ("step", "epoch", "lr", "key_momentum", "loss", *LOSS_PARTS)
TRACE_ENV = "MSCL_TRACE_ITEMS"  # test hook: each rank appends its batches' items to <folder>/rank<r>.jsonl (exactly-once checks)


class TooFewClipsError(UserError, ValueError):
    """The clip index cannot fill one batch; the message says what to lower."""


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    started_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> Distributed:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return Distributed(torch.distributed.get_rank(), world, True)
    return Distributed(torch.distributed.get_rank(), world)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def make_deterministic(device: torch.device, deterministic: bool = True) -> None:
    """cuDNN picks its fastest algorithm per shape by timing them (`benchmark`), and some of those
    are not deterministic: with `deterministic` both off on CUDA, so the same state gives the same
    step (measured on an H200 at the paper's scale: 10% fewer clips/s than benchmark mode)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast dtype of mixed precision: float16 on CUDA; None (float32) elsewhere. bfloat16 on
    CPU was measured (bench/train_step.py): 1.3x faster per step on this project's machine, but with
    torch 2.14 its gradients differ between identical runs from the second step and runs turn NaN,
    so CPU trains in float32."""
    return torch.float16 if enabled and device.type == "cuda" else None


def random_state(model: MSCL, device: torch.device) -> dict[str, Any]:
    """This rank's generators: torch's CPU one, its CUDA one (when training there), the model's shuffles."""
    state = {"torch": torch.get_rng_state(), "shuffle": model.shuffle_generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_random_state(model: MSCL, device: torch.device, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    model.shuffle_generator.set_state(state["shuffle"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up from ~0 to 1 over `warmup` steps, then cosine to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def config_of(train: TrainParams, dataset: DatasetParams, method: str, flow_method: str, world_size: int) -> dict[str, Any]:
    """What a checkpoint must match to be resumed (plain types: safe for weights_only loading)."""
    return {"method": method, "flow_method": flow_method, "world_size": world_size,
            "train": train.model_dump(mode="json"), "dataset": dataset.model_dump(mode="json")}  # fmt: skip


def save_atomic(obj: Any, path: Path) -> None:
    atomic_write_bytes(path, saver(obj))


def saver(obj: Any):
    """A writer of `obj` with torch.save for atomic_write_bytes or a FileSet. Through a file object:
    given a path, torch.save names the archive's records after the file (its temporary name), so two
    identical saves differed in bytes; through a file object they are "archive/..." every time."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)

    return write


@dataclass
class Run:
    """One training's state between its steps: what it trains, on what, and how far it got."""

    model: MSCL
    network: torch.nn.Module  # the model, or DDP around it
    optimiser: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    dataset: MSCLClips
    loader: ClipLoader
    feed: DeviceFeed
    device: torch.device
    dist: Distributed
    config: dict[str, Any]
    autocast: torch.dtype | None
    steps_per_epoch: int
    total_steps: int
    step: int = 0
    log: list[dict] = field(default_factory=list)
    unread: list[tuple[dict, tuple[str, ...], torch.Tensor]] = field(default_factory=list)  # rows whose losses are still on the device


def train(
    train_params: TrainParams,
    dataset_params: DatasetParams,
    *,
    method: Method,
    index: str | Path,
    store: str | Path,
    flow_method: str,
    out: str | Path,
    stop_after: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume) into `out`; returns the final metrics. `stop_after` ends the run after that
    many steps in total, leaving the checkpoint as a killed run would (for tests and smoke runs)."""
    out = Path(out)
    run = _build(train_params, dataset_params, method, index, store, flow_method)
    _resume(run, train_params, out)
    clips_per_s = _loop(run, train_params, out, method, stop_after, progress)
    if run.step < run.total_steps:  # stopped early on purpose: the checkpoint is the result
        return {"steps": run.step, "stopped": True}
    return _finish(run, out, clips_per_s)


def _build(p: TrainParams, dataset_params: DatasetParams, method: Method, index: str | Path, store: str | Path,
           flow_method: str) -> Run:  # fmt: skip
    """The device, the ranks, the data, the model and its optimiser, schedule and scaler, seeded."""
    device = pick_device(p.device)
    make_deterministic(device, p.deterministic)
    dist = setup_distributed(device)
    torch.set_num_threads(thread_budget(p.threads))
    torch.manual_seed(p.seed)  # the same initial weights on every rank
    # The dataset yields rotated flow only when a loss uses it, and flow only for MSCL (or FAME's masks).
    dataset_params = dataset_params.model_copy(update={"rotation": method == "mscl" and p.fra})
    dataset = MSCLClips(index, store, flow_method, dataset_params, rank=dist.rank, world_size=dist.world_size,
                        with_flow=method == "mscl" or p.fame > 0)  # fmt: skip
    # On CPU the workers share cores with the step: lower their priority so they fill idle time only.
    loader = ClipLoader(dataset, p.batch_size, num_workers=p.num_workers, pin_memory=device.type == "cuda",
                        worker_nice=10 if device.type == "cpu" else 0, drop_last=True)  # fmt: skip
    feed = DeviceFeed(loader, device)  # augments each batch on the device, one step ahead
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise TooFewClipsError(f"{index}: {dataset.epoch_length} clips per rank cannot fill one batch of {p.batch_size}")
    total_steps = p.epochs * steps_per_epoch
    warmup_steps = round(p.warmup_epochs * steps_per_epoch)
    model = MSCL(p, method, flow_input=dataset_params.flow_input).to(device)
    optimiser = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=p.lr, momentum=p.sgd_momentum,
                                weight_decay=p.weight_decay)  # fmt: skip
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: lr_factor(s, warmup_steps, total_steps))
    # Mixed precision on CUDA: float16 with a gradient scaler; the losses compute in float32 (pipeline/models/losses.py).
    autocast = amp_dtype(device, p.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast == torch.float16)
    config = config_of(p, dataset_params, method, flow_method, dist.world_size)
    return Run(model, model, optimiser, schedule, scaler, dataset, loader, feed, device, dist, config, autocast, steps_per_epoch,
               total_steps)  # fmt: skip


def _resume(run: Run, p: TrainParams, out: Path) -> None:
    """Pick up where a killed run stopped (its checkpoint, if saved with the same config), or seed a
    fresh one; then wrap the model for DDP."""
    dist, checkpoint_path = run.dist, out / CHECKPOINT
    # What a killed run left: finish the outputs it had committed (that removes its checkpoint too),
    # delete its temporary files (rank 0; the others only finish a commit, before reading the checkpoint).
    if dist.main:
        sweep(out)
    else:
        recover(out)
    if checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location=run.device, weights_only=True)
        if state["config"] == run.config:
            run.model.load_state_dict(state["model"])
            run.optimiser.load_state_dict(state["optimiser"])
            run.schedule.load_state_dict(state["schedule"])
            run.scaler.load_state_dict(state["scaler"])
            run.dataset.load_state_dict(state["dataset"][dist.rank])
            set_random_state(run.model, run.device, state["rng"][dist.rank])
            run.step, run.log = state["step"], state["log"]
            if dist.main:
                print(f"resuming {out} at step {run.step} of {run.total_steps}", file=sys.stderr)
        elif dist.main:
            print(f"{checkpoint_path}: saved with other params, starting afresh", file=sys.stderr)
    if run.step == 0:  # a fresh run: each rank its own stream for the key shuffles (a resumed one restored its own)
        torch.manual_seed(p.seed + 1000 * dist.rank)
        run.model.shuffle_generator.manual_seed(p.seed + 1000 * dist.rank)
    if dist.world_size > 1:
        run.network = DistributedDataParallel(run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None,
                                              broadcast_buffers=False)  # fmt: skip


def _save_checkpoint(run: Run, path: Path) -> None:
    """Everything the run needs to go on, with every rank's dataset position and RNG gathered so one
    file resumes them all."""
    read_losses(run)
    per_rank = [run.feed.state_dict(), random_state(run.model, run.device)]  # the feed is a batch ahead of the dataset
    if run.dist.world_size > 1:
        gathered: list[Any] = [None] * run.dist.world_size
        torch.distributed.all_gather_object(gathered, per_rank)
    else:
        gathered = [per_rank]
    if run.dist.main:
        save_atomic({
            "model": run.model.state_dict(), "optimiser": run.optimiser.state_dict(), "schedule": run.schedule.state_dict(),
            "scaler": run.scaler.state_dict(), "step": run.step, "log": run.log, "config": run.config,
            "dataset": [g[0] for g in gathered], "rng": [g[1] for g in gathered],
        }, path)  # fmt: skip


def _loop(run: Run, p: TrainParams, out: Path, method: Method, stop_after: int | None, progress: bool) -> float:
    """The steps, to the end or to `stop_after`, with checkpoints; the clips per second it trained at."""
    if run.dist.main:
        out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=run.total_steps, initial=run.step, desc=f"train {method}", unit="step", disable=not (progress and run.dist.main))
    run.model.train()
    started, clips_seen = time.perf_counter(), 0
    trace = os.environ.get(TRACE_ENV)
    while run.step < run.total_steps and (stop_after is None or run.step < stop_after):
        epoch = run.dataset.epoch
        for batch in run.feed:
            if trace:
                _trace(Path(trace), run.dist.rank, epoch, batch)
            _step(run, p, batch, epoch)
            clips_seen += len(batch["video_id"]) * run.dist.world_size
            if run.step % p.log_every == 0:
                read_losses(run)
                rate = clips_seen / (time.perf_counter() - started)
                bar.set_postfix(loss=f"{run.log[-1]['loss']:.3f}", clips_s=f"{rate:.1f}", epoch=epoch)
            bar.update()
            if run.step % p.checkpoint_every == 0 or run.step == run.total_steps or run.step == stop_after:
                _save_checkpoint(run, out / CHECKPOINT)
            if run.step == stop_after:
                break
    read_losses(run)
    run.feed.close()
    bar.close()
    return clips_seen / max(time.perf_counter() - started, 1e-9)


def _trace(folder: Path, rank: int, epoch: int, batch: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    line = {"epoch": epoch, "items": batch["item"].tolist(), "padding": batch["padding"].tolist(), "video_id": list(batch["video_id"])}
    with open(folder / f"rank{rank}.jsonl", "a") as file:
        file.write(json.dumps(line) + "\n")


def _step(run: Run, p: TrainParams, batch: dict[str, Any], epoch: int) -> dict[str, Any]:
    """One optimisation step on `batch`; its row of losses.csv, whose losses `read_losses` fills in."""
    momentum = key_momentum(run.step, run.total_steps, p.key_momentum)
    with torch.autocast(run.device.type, dtype=run.autocast, enabled=run.autocast is not None):
        loss, parts, keys = run.network(batch, momentum)
    run.optimiser.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimiser)
    torch.nn.utils.clip_grad_norm_(run.optimiser.param_groups[0]["params"], p.grad_clip)
    run.scaler.step(run.optimiser)
    run.scaler.update()
    run.model.enqueue(keys)
    row = {"step": run.step + 1, "epoch": epoch, "lr": run.schedule.get_last_lr()[0], "key_momentum": momentum}
    # The losses stay on the device until read_losses: reading them now would wait for the GPU each step.
    present = tuple(k for k in LOSS_PARTS if k in parts)
    run.unread.append((row, present, torch.stack([loss.detach().float()] + [parts[k].detach().float() for k in present])))
    run.schedule.step()
    run.step += 1
    return row


def read_losses(run: Run) -> None:
    """Move the rows still waiting for their losses into the log, with one read from the device."""
    if not run.unread:
        return
    values = torch.stack([v for _, _, v in run.unread]).cpu().tolist()
    for (row, present, _), (loss, *parts) in zip(run.unread, values, strict=True):
        found = dict(zip(present, parts, strict=True))
        run.log.append({**row, "loss": loss, **{k: found.get(k, "") for k in LOSS_PARTS}})
    run.unread.clear()


def _finish(run: Run, out: Path, clips_per_s: float) -> dict[str, Any]:
    """The final metrics, and rank 0's four outputs replaced together with the checkpoint's removal."""
    read_losses(run)
    in_sync = ranks_in_sync(run.model, run.dist)
    metrics = final_metrics(run.log, run.steps_per_epoch, clips_per_s, run.dist.world_size, in_sync)
    metrics["chance"] = run.model.chance_losses(run.dataset.index.clip_len)
    damaged = torch.tensor([run.dataset.damaged_clips], dtype=torch.int64)  # in this run (since a resume), every rank
    if run.dist.world_size > 1:
        torch.distributed.all_reduce(damaged)
    metrics["clips_replaced_damaged"] = int(damaged)
    if run.dist.main:
        with FileSet(out) as files:  # the four outputs replaced together, with the checkpoint's removal
            files.stage("losses.csv", log_writer(run.log))
            files.stage("model.pt", saver({"state_dict": run.model.state_dict(), "config": run.config}))
            files.stage("rgb_encoder.pt", saver(run.model.rgb.backbone_state_dict()))
            files.stage("metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=2) + "\n"))
            files.remove(CHECKPOINT)  # a finished run starts afresh next time
    if run.dist.started_here:
        torch.distributed.destroy_process_group()
    return metrics


def thread_budget(requested: int = 0) -> int:
    """Threads for one rank: `requested`, or the cores this process may use (its affinity, which
    taskset, cgroups and schedulers set) divided among the ranks on this machine. Two jobs each
    taking every core ran 15x slower per step than one on 2 cores."""
    if requested:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def ranks_in_sync(model: MSCL, dist: Distributed) -> bool:
    """Whether every rank ends with the same query weights (DDP's promise, checked)."""
    if dist.world_size == 1:
        return True
    total = torch.stack([q.detach().double().sum() for q in model.parameters() if q.requires_grad]).sum().reshape(1)
    low, high = total.clone(), total.clone()
    torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
    torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
    return bool(torch.isclose(low, high, rtol=0, atol=1e-9 * max(1.0, float(abs(high)))))


def final_metrics(log: list[dict], steps_per_epoch: int, clips_per_s: float, world_size: int, in_sync: bool) -> dict[str, Any]:
    last_epoch = log[-steps_per_epoch:]
    metrics: dict[str, Any] = {"steps": len(log), "epochs": len(log) // steps_per_epoch, "world_size": world_size,
                               "clips_per_s": round(clips_per_s, 2), "ranks_in_sync": in_sync}  # fmt: skip
    for name in ("loss", *LOSS_PARTS):
        values = [row[name] for row in last_epoch if row[name] != ""]
        if values:
            metrics[f"last_epoch_{name}"] = round(sum(values) / len(values), 5)
    metrics["first_epoch_loss"] = round(sum(row["loss"] for row in log[:steps_per_epoch]) / min(steps_per_epoch, len(log)), 5)
    return metrics


def log_writer(log: list[dict]):
    """A writer of losses.csv for atomic_write_bytes or a FileSet."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
            writer.writeheader()
            writer.writerows(log)

    return write
