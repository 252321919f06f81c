"""The data stages on a cluster that shares no disk: a dask scheduler and worker processes, each worker
in its own empty working folder, against a local S3 server (moto's) holding the videos and the store.

The client runs the commands of docs/cluster.md (`python cli.py probe|decode|extract-flow|sample|train|
evaluate --params cluster.yaml --scheduler tcp://...`) with every location in params a bucket URL but the
tables. The same DAG on local disk gives the same bytes: every array (and the store's group metadata),
every table's rows, the trainings' losses. A worker SIGKILLed while it publishes, and a client SIGKILLed
while it publishes, leave a store that the next run completes to the same bytes; the client's lease
keeps a second run out until it ends. No secret appears in any output, table, log or object.
"""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import s3fs
import yaml
from moto import server as moto_server

from conftest import REPO, tree_bytes
from pipeline.data.dataset import ClipIndex
from pipeline.storage.tables import read_table
from schemas import store as layout

pytestmark = pytest.mark.slow

DASK = str(Path(sys.executable).parent / "dask")
BUCKET = "mscl-cluster"
KEY_ID = "MSCLCLUSTERKEYID"
SECRET = "mscl-cluster-secret-4a7e19c2f0"  # must show up nowhere but in the environment
TABLES = ("manifest/videos.parquet", "manifest/failures.parquet", "decode/decoded.parquet", "decode/failures.parquet",
          "decode/arrays.parquet", "flow/videos.parquet", "flow/stats.parquet", "flow/failures.parquet", "flow/arrays.parquet",
          "sample/frames.parquet", "sample/clips.parquet", "sample/failures.parquet")  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 and the environment every process gets: the credentials only
    there, nothing from the machine's ~/.aws. The endpoint is not in it: the client's params give it
    (data.storage_options), and the cluster's workers get it from the client."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server's line per request
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    no_file = str(tmp_path_factory.mktemp("aws") / "none")
    variables = {"AWS_CONFIG_FILE": no_file, "AWS_SHARED_CREDENTIALS_FILE": no_file, "AWS_ACCESS_KEY_ID": KEY_ID,
                 "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}"}  # fmt: skip
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "MSCL_KILL_AT"}
    environ.update(variables, DVC_NO_ANALYTICS="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    environ["MSCL_TEST_ENDPOINT"] = environ.pop("AWS_ENDPOINT_URL_S3")  # for write_params
    with pytest.MonkeyPatch.context() as patch:  # for this process's own s3fs (uploads, listings)
        for name in [k for k in os.environ if k.startswith("AWS_")]:
            patch.delenv(name)
        for name, value in variables.items():
            patch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir(BUCKET)
        yield environ
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def _fs() -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(skip_instance_cache=True)


class Cluster:
    """`dask scheduler` and `dask worker` processes, each worker in a folder of its own."""

    def __init__(self, root: Path, environ: dict[str, str]) -> None:
        self.root, self.environ, self.procs = root, environ, []
        scheduler_file = root / "scheduler.json"
        self.procs.append(self._start([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", ":0",
                                       "--scheduler-file", str(scheduler_file)], root, environ))  # fmt: skip
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.address = json.loads(scheduler_file.read_text())["address"]

    @staticmethod
    def _start(args: list[str], cwd: Path, environ: dict[str, str]) -> subprocess.Popen:
        return subprocess.Popen(args, cwd=cwd, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def add_worker(self, name: str, *, nanny: bool = True, **extra: str) -> subprocess.Popen:
        folder = self.root / name
        folder.mkdir()
        args = [DASK, "worker", self.address, "--nthreads", "1", "--nworkers", "1", "--host", "127.0.0.1", "--no-dashboard",
                "--local-directory", str(folder), "--name", name] + ([] if nanny else ["--no-nanny"])  # fmt: skip
        proc = self._start(args, folder, {**self.environ, **extra})
        self.procs.append(proc)
        return proc

    def wait_for(self, n: int) -> None:
        from dask.distributed import Client

        with Client(self.address, timeout="30s") as client:
            client.wait_for_workers(n, timeout=90)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.kill()
        for proc in self.procs:
            proc.wait(timeout=30)


def cli(*args: str, cwd: Path, environ: dict[str, str], check: bool = True, **extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), *args], cwd=cwd, env={**environ, **extra}, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    if check:
        assert proc.returncode == 0, f"{' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


def write_params(folder: Path, data: dict, name: str = "params.yaml") -> Path:
    """A params file with a small DAG (12 short demo videos, DIS flow, a token training) and these locations."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(data)
    params["make_demo"].update(videos_per_class=2, frames=32)
    params["flow"]["method"] = "dis"
    params["dataset"].update(crop_size=32)
    params["train"].update(width=8, epochs=1, batch_size=8, queue_size=16, num_workers=0, local_dim=16)
    path = folder / name
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


DAG = [("probe",), ("decode",), ("extract-flow",), ("sample",), ("train", "--method", "mscl"), ("train", "--method", "rgb_only"),
       ("evaluate",)]  # fmt: skip


@pytest.fixture(scope="module")
def runs(env, tmp_path_factory):
    """The DAG on local disk (in process order), and through the bucket on a cluster of two workers."""
    local = tmp_path_factory.mktemp("local")
    write_params(local, {"videos": str(local / "demo/videos"), "demo": str(local / "demo"), "labels": str(local / "demo/labels.parquet")})
    cli("make-demo", "--scheduler", "sync", cwd=local, environ=env)
    outputs = {}
    for command in DAG:
        outputs[command] = cli(*command, *(["--scheduler", "sync"] if command[0] not in ("train", "evaluate") else []),
                               cwd=local, environ=env)  # fmt: skip
    _fs().put(str(local / "demo/videos"), f"{BUCKET}/videos", recursive=True)
    client = tmp_path_factory.mktemp("client")
    (client / "labels.parquet").write_bytes((local / "demo/labels.parquet").read_bytes())
    write_params(client, {"videos": f"s3://{BUCKET}/videos", "store": f"s3://{BUCKET}/store.zarr", "labels": "labels.parquet",
                          "storage_options": {"s3": {"endpoint_url": env["MSCL_TEST_ENDPOINT"]}}}, "cluster.yaml")  # fmt: skip
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), env)
    try:
        cluster.add_worker("worker-1")
        cluster.add_worker("worker-2")
        cluster.wait_for(2)
        remote = {}
        for command in DAG:
            scheduler = ["--scheduler", cluster.address] if command[0] not in ("train", "evaluate") else []
            remote[command] = cli(*command, "--params", "cluster.yaml", *scheduler, cwd=client, environ=env)  # docs/cluster.md's
        yield {"local": local, "client": client, "cluster": cluster, "outputs": [*outputs.values(), *remote.values()]}
    finally:
        cluster.close()


def bucket_store(prefix: str) -> dict[str, bytes]:
    """Every object of the store at s3://BUCKET/<prefix>, by key within it, as tree_bytes gives a folder."""
    fs = _fs()
    root = f"{BUCKET}/{prefix}"
    return {key[len(root) + 1 :]: fs.cat_file(key) for key in sorted(fs.find(root))}


def without_marker(files: dict[str, bytes]) -> dict[str, bytes]:
    """The store's files with the root's identity marker (a random id and a time) taken out."""
    files = dict(files)
    root = json.loads(files.pop("zarr.json"))
    assert root["attributes"].pop(layout.STORE_MARKER)["id"]
    return {**files, "zarr.json": json.dumps(root).encode()}


def test_the_dag_through_the_bucket_gives_the_bytes_of_the_dag_on_local_disk(runs):
    local, client = runs["local"], runs["client"]
    remote = without_marker(bucket_store("store.zarr"))
    here = without_marker(tree_bytes(local / "data/store.zarr"))
    assert remote.keys() == here.keys() and len(here) > 3 * 12
    assert [key for key in here if remote[key] != here[key]] == []
    for table in TABLES:  # the same rows; their metadata names where the videos and the store were
        assert read_table(client / "data" / table).to_pylist() == read_table(local / "data" / table).to_pylist(), table
    for method in ("mscl", "rgb_only"):
        assert (client / f"data/train/{method}/losses.csv").read_bytes() == (local / f"data/train/{method}/losses.csv").read_bytes()
    metrics = json.loads((client / "data/evaluate/metrics.json").read_text())
    assert metrics == json.loads((local / "data/evaluate/metrics.json").read_text())
    # Nothing was written beside the workers but dask's own scratch space.
    for worker in ("worker-1", "worker-2"):
        folder = runs["cluster"].root / worker
        assert not [p for p in folder.rglob("*") if p.is_file() and "dask-scratch-space" not in p.parts]


def test_no_secret_in_any_output_table_log_or_object(runs):
    texts = [out.stdout + out.stderr for out in runs["outputs"]]
    texts += [data.decode("latin-1") for data in tree_bytes(runs["client"]).values()]
    fs = _fs()
    texts += [fs.cat_file(key).decode("latin-1") for key in fs.find(BUCKET) if not key.startswith(f"{BUCKET}/videos/")]
    for secret in (SECRET, KEY_ID, "X-Amz-Signature", "X-Amz-Credential"):
        assert not [text[:200] for text in texts if secret in text], secret


def test_a_worker_and_the_client_killed_while_publishing_leave_a_store_the_next_run_completes(runs, env):
    """A third worker SIGKILLs itself when it is about to publish its first frames array (its task
    goes to another worker); then the flow stage's client SIGKILLs itself while publishing its third
    flow array. A second run at once is refused while the dead client's lease lasts, naming it; once
    the lease has ended, the next run completes the store to the same bytes as local disk's."""
    client, cluster = runs["client"], runs["cluster"]
    folder = client / "killed"
    folder.mkdir()
    url = f"s3://{BUCKET}/killed.zarr"
    write_params(folder, {"videos": f"s3://{BUCKET}/videos", "store": url, "manifest": str(client / "data/manifest"),
                          "storage_options": {"s3": {"endpoint_url": env["MSCL_TEST_ENDPOINT"]}}})  # fmt: skip
    killer = cluster.add_worker("killer", nanny=False, MSCL_KILL_AT="publish.aside")
    cluster.wait_for(3)
    at = {"cwd": folder, "environ": {**env, "MSCL_LEASE_S": "15"}}
    cli("decode", "--scheduler", cluster.address, **at)
    assert killer.wait(timeout=60) == -signal.SIGKILL
    dead = cli("extract-flow", "--scheduler", cluster.address, **at, check=False, MSCL_KILL_AT="publish.aside:3")
    assert dead.returncode == -signal.SIGKILL
    refused = cli("extract-flow", "--scheduler", cluster.address, **at, check=False)
    assert refused.returncode == 1 and "is in use by extract-flow" in refused.stderr and "lease ends within" in refused.stderr
    fs = _fs()
    lease_ends = json.loads(fs.cat_file(f"{BUCKET}/killed.zarr.lock"))["lease_ends"]
    time.sleep(max(0.0, lease_ends - time.time()) + 0.5)
    cli("extract-flow", "--scheduler", cluster.address, **at)
    again = cli("decode", "--scheduler", cluster.address, **at)  # nothing to do but sweep what the killed worker left
    assert "skipped 12" in again.stdout and "decoded" not in again.stdout.replace("decoded.parquet", "")
    assert without_marker(bucket_store("killed.zarr")) == without_marker(bucket_store("store.zarr"))
    assert not fs.exists(f"{BUCKET}/killed.zarr.partial") or not fs.find(f"{BUCKET}/killed.zarr.partial")
    assert not fs.exists(f"{BUCKET}/killed.zarr.lock")  # released by the last run


def test_torchrun_on_two_nodes_trains_from_the_bucket_each_clip_once_an_epoch(runs, env, tmp_path):
    """Two torchrun "nodes" on this host (node_rank 0 and 1, c10d rendezvous on 127.0.0.1, gloo):
    each rank reads its own share of the index from the bucket's store, and over an epoch every item
    (a video, dataset.epoch: per_video) is trained on exactly once, by one rank (the padding that
    evens the ranks out aside)."""
    import socket

    client = runs["client"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    trace = tmp_path / "trace"
    out = tmp_path / "two_nodes"
    params = yaml.safe_load((client / "cluster.yaml").read_text())
    params["train"].update(batch_size=3, epochs=2)  # 12 videos: 6 a rank, two batches each epoch
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    torchrun = str(Path(sys.executable).parent / "torchrun")
    procs = [subprocess.Popen([torchrun, "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1", "--rdzv_backend", "c10d",
                               "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "two-nodes", str(REPO / "cli.py"), "train",
                               "--params", str(tmp_path / "params.yaml"), "--method", "mscl", "--out", str(out)],
                              cwd=client, env={**env, "MSCL_TRACE_ITEMS": str(trace)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for rank in (0, 1)]  # fmt: skip
    logs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["epochs"] == 2
    seen: dict[int, list[tuple[int, int]]] = {}
    for rank in (0, 1):
        for line in (trace / f"rank{rank}.jsonl").read_text().splitlines():
            batch = json.loads(line)
            seen.setdefault(batch["epoch"], []).extend((item, rank) for item, pad in zip(batch["items"], batch["padding"]) if not pad)
    items = len(ClipIndex.load(client / "data/sample/clips.parquet").videos)  # dataset.epoch per_video: an item is a video
    assert seen and all(sorted(item for item, _ in pairs) == list(range(items)) for pairs in seen.values())
    assert all({rank for _, rank in pairs} == {0, 1} for pairs in seen.values())


def test_dvc_tracks_a_videos_root_in_a_bucket_by_its_objects(env, tmp_path):
    """With data.videos a bucket URL, the probe stage's dependency is the prefix (the dvc-s3 plugin,
    by ETags): up to date after a run, changed once an object changes."""
    fs = _fs()
    fs.pipe_file(f"{BUCKET}/dvc-videos/a.mp4", b"first")
    environ = {**env, "AWS_ENDPOINT_URL_S3": env["MSCL_TEST_ENDPOINT"]}
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*dvc, "init", "-q"], cwd=tmp_path, env=environ, check=True)
    (tmp_path / "dvc.yaml").write_text(f"stages:\n  probe:\n    cmd: echo probed > out.txt\n    deps:\n      - s3://{BUCKET}/dvc-videos\n"
                                       "    outs:\n      - out.txt\n")  # fmt: skip

    def dvc_says(*args: str) -> str:
        proc = subprocess.run([*dvc, *args], cwd=tmp_path, env=environ, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    assert "Running stage 'probe'" in dvc_says("repro")
    assert "up to date" in dvc_says("status")
    fs.pipe_file(f"{BUCKET}/dvc-videos/a.mp4", b"second")
    assert re.search(rf"modified:\s+s3://{BUCKET}/dvc-videos", dvc_says("status"))
