"""Kill anywhere, lose nothing (issue 16): each stage that writes outputs (decode, extract-flow,
sample, train, evaluate) is started as a subprocess over the outputs of an older run (other params),
SIGKILLed at moments chosen from its progress, and started again, until a run ends. Then:

- after every kill, what a reader sees is whole: each array of the stage's group is the old array
  or the new one, file for file (or absent, never a zarr.json without its shards), and the stage's
  set of tables is all old or all new (as `read_table` sees it: a committed set is finished first);
- after the last run, every output is byte-identical to an uninterrupted run's (tables, arrays,
  model.pt, rgb_encoder.pt, losses.csv, metrics.json; the train stage's metrics.json but for
  `clips_per_s`, a throughput measurement); no temporary file, journal or array put aside is left
  anywhere, and nothing is left under `<store>.partial/`.

Kills from outside (SIGKILL sent by this test) come when a partial array appears, a shard file is
written, a progress bar starts or a checkpoint reaches a step. Kills inside the windows that matter
(an old array renamed aside and the new one not yet in, a set of tables half renamed, a file written
and not yet renamed) use `MSCL_KILL_AT` (pipeline/storage/durable.py): the process SIGKILLs itself there.
Tiny data (4 videos of 32 frames at 48 px, 9 training steps at 16 px), so it runs in CI: 40 s on
2 shared cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import cli
from conftest import REPO, tree_bytes
from pipeline.storage import durable
from schemas import store as layout

pytestmark = pytest.mark.slow

DATA = {"videos": "demo/videos", "demo": "demo", "manifest": "manifest", "store": "store.zarr", "decode": "decode",
        "flow": "flow", "sample": "sample", "train": "train", "evaluate": "evaluate", "labels": "demo/labels.parquet"}  # fmt: skip
PARAMS = {
    "data": DATA,  # relative, and every run in its own folder: tables record paths as given
    "make_demo": {"classes": ["zoom_in", "oscillate"], "videos_per_class": 2, "frames": 32, "width": 64, "height": 48},
    "decode": {"short_side": 48, "chunk_frames": 4, "shard_frames": 8},
    "flow": {"method": "dis", "chunk_frames": 4, "shard_frames": 8, "pairs_per_task": 8},
    "sample": {"threshold": "absolute", "absolute": 0.0},  # every clip: 12, 3 steps an epoch
    "dataset": {"crop_size": 16, "view2_window": 8, "epoch": "per_clip"},
    "train": {"encoder": "compact", "width": 8, "flow_width_ratio": 0.5, "flow_blocks": [1, 1, 1, 1], "embed_dim": 16,
              "local_dim": 16, "queue_size": 16, "batch_size": 4, "epochs": 3, "num_workers": 0, "checkpoint_every": 1,
              "threads": 1},
    "evaluate": {"clips_per_video": 2, "probe_steps": 20},
}  # fmt: skip
# Every run on one thread, in this process and in the subprocesses, so that their floats agree.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SYNC = ["--scheduler", "sync"]
TMP_PATTERNS = (f"*{durable.TMP_SUFFIX}", "*.trash", "zarr.*.partial", durable.JOURNAL)


def write_params(root: Path, name: str = "params.yaml", **changes: dict) -> str:
    params = json.loads(json.dumps(PARAMS))
    for section, values in changes.items():
        params[section] = {**params.get(section, {}), **values}
    (root / name).write_text(yaml.safe_dump(params))
    return name


def run_here(root: Path, *args: str) -> None:
    """A stage in this process (cwd `root`), on one torch thread as the subprocesses."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.chdir(root):
            result = CliRunner().invoke(cli.app, list(args))
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, f"{args}: {result.output}\n{result.exception!r}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """Every stage run once, uninterrupted: the outputs every killed and resumed run must equal."""
    root = tmp_path_factory.mktemp("reference")
    params = write_params(root)
    run_here(root, "make-demo", "--params", params, *SYNC)
    run_here(root, "probe", "--params", params, *SYNC)
    run_here(root, "decode", "--params", params, *SYNC)
    run_here(root, "extract-flow", "--params", params, *SYNC)
    run_here(root, "sample", "--params", params, *SYNC)
    run_here(root, "train", "--params", params, "--method", "mscl")
    run_here(root, "train", "--params", params, "--method", "rgb_only")
    run_here(root, "evaluate", "--params", params)
    return root


# What each stage reads (copied from the reference), writes (a folder of files replaced as a set, and
# a store group), the command, and the older params whose outputs it starts over.
STAGES = {
    "decode": dict(inputs=["demo", "manifest"], folder="decode", group=layout.FRAMES_GROUP, command=["decode", *SYNC],
                   old={"decode": {"short_side": 32}}),
    "extract-flow": dict(inputs=["demo", "manifest", "decode", "store.zarr/frames", "store.zarr/zarr.json"], folder="flow",
                         group="flow/dis", command=["extract-flow", *SYNC], old={"flow": {"dis": {"preset": "ultrafast"}}}),
    "sample": dict(inputs=["flow", "store.zarr/flow", "store.zarr/zarr.json"], folder="sample", group=None,
                   command=["sample", *SYNC], old={"sample": {"block": 14}}),
    "train": dict(inputs=["sample", "store.zarr"], folder="train/mscl", group=None, command=["train", "--method", "mscl"],
                  old={"train": {"lr": 0.05}}),
    "evaluate": dict(inputs=["demo", "decode", "store.zarr", "train"], folder="evaluate", group=None, command=["evaluate"],
                     old={"evaluate": {"ks": [1, 2]}}),
}  # fmt: skip


def partial_appears(work: Path, group: str):
    """Work in progress: an array being built under the partial root."""
    folder = work / f"store.zarr{layout.PARTIAL_SUFFIX}" / group
    return lambda proc, err: folder.is_dir() and any(not p.name.endswith(".trash") for p in folder.iterdir())


def shard_written(work: Path, group: str):
    """Work in progress: a shard file written into an array being built."""
    folder = work / f"store.zarr{layout.PARTIAL_SUFFIX}" / group
    return lambda proc, err: folder.is_dir() and any(p.is_file() for p in folder.glob("*/c/*/*/*/*"))


def says(text: str):
    """Work in progress: the stage's progress bar has started."""
    return lambda proc, err: text in err


def checkpoint_at(work: Path, step: int):
    """Training in progress: its checkpoint holds at least `step` steps."""

    def ready(proc, err) -> bool:
        path = work / STAGES["train"]["folder"] / "checkpoint.pt"
        try:
            return torch.load(path, weights_only=True)["step"] >= step
        except (OSError, RuntimeError, EOFError):
            return False

    return ready


# For each stage, the kills of its runs in order (each run resumes what the last left): a condition
# watched from outside, or a point inside where the process kills itself (MSCL_KILL_AT).
KILLS = {
    "decode": [lambda w: partial_appears(w, "frames"), "publish.aside:2", "commit.renamed:1"],
    "extract-flow": [lambda w: shard_written(w, "flow/dis"), "publish.aside:2", "publish.renamed:1", "commit.journal"],
    "sample": [lambda w: says("sample:"), "atomic.written:1", "commit.renamed:2"],
    "train": [lambda w: checkpoint_at(w, 3), "atomic.written:2", "commit.renamed:2"],
    "evaluate": [lambda w: says("evaluate: clips"), "commit.renamed:1"],
}


def run_killed(work: Path, command: list[str], kill) -> str:
    """Run the stage in a subprocess and make sure it dies by SIGKILL: sent by us once `kill(proc,
    stderr so far)` holds, or by itself at the MSCL_KILL_AT point `kill`. Returns its stderr."""
    env = dict(ENV)
    if isinstance(kill, str):
        env["MSCL_KILL_AT"] = kill
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), *command, "--params", "params.yaml"], cwd=work, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    err: list[bytes] = []
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: proc.stderr.read1(4096), b"")), daemon=True)
    reader.start()
    try:
        if not isinstance(kill, str):
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    ready = kill(proc, b"".join(err).decode(errors="replace"))
                except OSError:  # a folder it looked at was being removed or created
                    ready = False
                if ready:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.002)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:  # the test failed: leave no process behind
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    said = b"".join(err).decode(errors="replace")
    assert code == -signal.SIGKILL, f"{command} with kill {kill!r} was not killed midway (exit {code}):\n{said[-3000:]}"
    return said


def outputs(root: Path, stage: str) -> tuple[dict[str, bytes], dict[str, dict[str, bytes]]]:
    """The stage's visible outputs: its folder's files (as a reader sees them: a committed set
    finished first, on a copy) and its arrays, each as its files' bytes."""
    spec = STAGES[stage]
    folder = root / spec["folder"]
    files: dict[str, bytes] = {}
    if folder.is_dir():
        scratch = root.parent / f"{root.name}.look"
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(folder, scratch)
        durable.recover(scratch)
        # The checkpoint is the trainer's state to resume from, not an output (checked gone at the end).
        files = {name: data for name, data in tree_bytes(scratch).items()
                 if not name.startswith(".") and name != "checkpoint.pt"}  # fmt: skip
        shutil.rmtree(scratch)
        if "metrics.json" in files and stage == "train":  # a throughput measurement, never the same twice
            metrics = json.loads(files["metrics.json"])
            metrics.pop("clips_per_s")
            files["metrics.json"] = json.dumps(metrics, sort_keys=True).encode()
    arrays: dict[str, dict[str, bytes]] = {}
    if spec["group"]:
        group = root / "store.zarr" / spec["group"]
        for entry in sorted(group.iterdir()) if group.is_dir() else []:
            if entry.is_dir():
                arrays[entry.name] = tree_bytes(entry)
    return files, arrays


def leftovers(root: Path) -> list[str]:
    """Temporary files, journals, arrays put aside, anything under the partial root."""
    found = {str(p.relative_to(root)) for pattern in TMP_PATTERNS for p in root.rglob(pattern)}
    partial = root / f"store.zarr{layout.PARTIAL_SUFFIX}"
    found |= {str(p.relative_to(root)) for p in partial.rglob("*") if not p.is_dir()} if partial.is_dir() else set()
    return sorted(found)


@pytest.mark.parametrize("stage", list(STAGES))
def test_killed_anywhere_the_stage_loses_nothing(stage, reference, tmp_path):
    spec = STAGES[stage]
    work = tmp_path / "work"
    work.mkdir()
    for name in spec["inputs"]:
        source = reference / name
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, work / name)
    write_params(work)
    run_here(work, *spec["command"], "--params", write_params(work, "old.yaml", **spec["old"]))
    old_files, old_arrays = outputs(work, stage)
    new_files, new_arrays = outputs(reference, stage)
    assert old_files.keys() == new_files.keys() and old_files != new_files  # two sets to tell apart
    assert all(old_files[n] != new_files[n] for n in new_files if n != "failures.parquet"), "some output is the same"
    assert old_arrays.keys() == new_arrays.keys() and all(old_arrays[n] != new_arrays[n] for n in new_arrays)

    for kill in KILLS[stage]:
        run_killed(work, spec["command"], kill if isinstance(kill, str) else kill(work))
        files, arrays = outputs(work, stage)
        assert files in (old_files, new_files), f"after kill {kill!r}: a mixed set of {sorted(files)}"
        for name, content in arrays.items():
            assert content in (old_arrays[name], new_arrays[name]), f"after kill {kill!r}: array {name} is a mix"

    run_here(work, *spec["command"], "--params", "params.yaml")
    files, arrays = outputs(work, stage)
    assert files == new_files
    assert arrays == new_arrays
    assert leftovers(work) == []
    assert not (work / spec["folder"] / "checkpoint.pt").exists()
