"""`dvc repro` on a fresh copy of the repository: builds everything, then does nothing; a params change
re-runs only the stages that depend on it."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from pipeline.storage.tables import read_table

pytestmark = pytest.mark.slow


def sh(*args, cwd, env=None, check=True):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A clone of the committed work tree (plus uncommitted edits), with a tiny demo size."""
    root = tmp_path_factory.mktemp("clone") / "repo"
    files = sh("git", "ls-files", "--cached", "--others", "--exclude-standard", cwd=REPO).stdout.split("\n")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    # Two 32-frame videos per class (a clip of 8 at stride 4 spans 29), DIS flow, a token training run.
    params["make_demo"].update(videos_per_class=2, frames=32)
    params["flow"]["method"] = "dis"
    params["dataset"].update(crop_size=32)
    params["train"].update(width=8, epochs=1, batch_size=8, queue_size=16, num_workers=0, local_dim=16)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    identity = {f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER") for what, value in (("NAME", "test"), ("EMAIL", "test@localhost"))}
    env = {**os.environ, **identity, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    sh("git", "init", "-q", cwd=root)
    sh("git", "add", "-A", cwd=root, env=env)
    sh("git", "commit", "-qm", "clone", cwd=root, env=env)  # `dvc exp run` needs a commit to start from
    return root, env


def test_repro_builds_everything_then_does_nothing(clone):
    root, env = clone
    first = sh(sys.executable, "-m", "dvc", "repro", cwd=root, env=env)
    for stage in ("make_demo", "probe", "decode", "flow", "sample", "train@mscl", "train@rgb_only", "evaluate", "report"):
        assert f"Running stage '{stage}'" in first.stdout
    assert "Evaluation" in (root / "data/report/index.html").read_text()  # the DAG ends with the report
    videos = read_table(root / "data/manifest/videos.parquet").to_pylist()
    decoded = read_table(root / "data/decode/decoded.parquet").to_pylist()
    assert len(videos) == len(decoded) == 12
    assert all((root / "data/store.zarr/frames" / row["video_id"] / "zarr.json").is_file() for row in decoded)
    # The store is no DVC output: no stage's output is in it, and none of its files is in .dvc/cache
    # (DVC names a cached file by its MD5); the listings of its arrays are cached instead.
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    outs = [out["path"] for stage in lock.values() for out in stage.get("outs", [])]
    assert outs and not [path for path in outs if path.startswith("data/store.zarr")]
    store_files = [p for p in (root / "data/store.zarr").rglob("*") if p.is_file() and p.stat().st_size]
    cached = {p.parent.name + p.name for p in (root / ".dvc/cache").rglob("*") if p.is_file()}
    assert len(store_files) > 24 and not {hashlib.md5(p.read_bytes()).hexdigest() for p in store_files} & cached
    for listing in ("data/decode/arrays.parquet", "data/flow/arrays.parquet"):
        assert hashlib.md5((root / listing).read_bytes()).hexdigest() in cached
    arrays = {row["array"] for row in read_table(root / "data/decode/arrays.parquet").to_pylist()}
    assert arrays == {row["array"] for row in decoded}
    second = sh(sys.executable, "-m", "dvc", "repro", cwd=root, env=env)
    assert "Running stage" not in second.stdout
    status = sh(sys.executable, "-m", "dvc", "status", cwd=root, env=env)
    assert "up to date" in status.stdout


def test_a_decode_param_reruns_only_decode(clone):
    root, env = clone
    sh(sys.executable, "-m", "dvc", "repro", cwd=root, env=env)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["decode"]["short_side"] = 64
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run = sh(sys.executable, "-m", "dvc", "repro", cwd=root, env=env)
    assert "Running stage 'decode'" in run.stdout and "Running stage 'flow'" in run.stdout
    assert "Running stage 'probe'" not in run.stdout and "Running stage 'make_demo'" not in run.stdout
    assert {min(r["height"], r["width"]) for r in read_table(root / "data/decode/decoded.parquet").to_pylist()} == {64}


def test_a_sample_threshold_reruns_only_sample(clone):
    root, env = clone
    sh(sys.executable, "-m", "dvc", "repro", cwd=root, env=env)
    run = sh(sys.executable, "-m", "dvc", "exp", "run", "-S", "sample.threshold=top_k", "-S", "sample.top_k=2", cwd=root, env=env)
    assert "Running stage 'sample'" in run.stdout
    for stage in ("make_demo", "probe", "decode", "flow"):
        assert f"Running stage '{stage}'" not in run.stdout
    clips = read_table(root / "data/sample/clips.parquet").to_pandas()
    assert (clips.groupby("video_id").selected.sum() == 2).all()


def test_metrics_name_every_model_and_an_ablation_reruns_only_training(clone):
    root, env = clone
    sh(sys.executable, "-m", "dvc", "repro", cwd=root, env=env)
    shown = sh(sys.executable, "-m", "dvc", "metrics", "show", "--json", cwd=root, env=env).stdout
    metrics = json.loads(shown)
    flat = json.dumps(metrics)
    for name in ("mscl", "rgb_only", "random", "R@1", "knn_top1", "last_epoch_loss"):
        assert name in flat
    run = sh(sys.executable, "-m", "dvc", "exp", "run", "-S", "train.lmcl=false", cwd=root, env=env)
    assert "Running stage 'train@mscl'" in run.stdout and "Running stage 'evaluate'" in run.stdout
    for stage in ("make_demo", "probe", "decode", "flow", "sample"):
        assert f"Running stage '{stage}'" not in run.stdout
    losses = (root / "data/train/mscl/losses.csv").read_text().splitlines()[0].split(",")
    assert "lmcl" in losses
    rows = [line.split(",") for line in (root / "data/train/mscl/losses.csv").read_text().splitlines()[1:]]
    assert all(row[losses.index("lmcl")] == "" for row in rows)  # LMCL switched off: no such loss
