"""DVC's cost of the Zarr store as a cached output ("before") against a listing table ("after").

    python bench/dvc_store.py --arrays 10000 [--shards 2] [--shard-bytes 4096] [--repeats 3] [--keep]

Builds two throw-away git+DVC repositories (in a temp folder) with the same two-stage pipeline,
`decode` -> `sample`, whose `decode` writes the same synthetic store `data/store.zarr` (N arrays
`frames/<id>/`, each a ~600-byte zarr.json and --shards shard files of --shard-bytes random bytes,
the same bytes in both repositories, made from a seed in params.yaml):
  - before: `decode` outs `data/store.zarr/frames` (cached, persist: true, as dvc.yaml has it
    today) and `sample` depends on that folder;
  - after: the store is declared nowhere (it is git-ignored, as `*.zarr/` is in the project);
    `decode` outs only `tables/arrays.parquet` (one row per array: array, fingerprint, num_frames)
    and `sample` depends on that listing.
Measured for each, in this one run: the first `dvc repro` (the store written, and before: every
shard hashed and copied into .dvc/cache), then `dvc status` and `dvc repro` with nothing to do,
--repeats times each (seconds of each call and the median), and the size of .dvc/cache.

DVC's state database (hashes kept by inode, mtime and size, under core.site_cache_dir, here
inside the temp folder) is what lets a repeated status skip reading the shards: "status_first_s"
is the first status after the building repro (status_s[0]), "status_rest_median_s" the later
ones, "state_entries" the rows of that database; "status_no_state_s" is one more status after the
database was deleted, i.e. what a status costs when every output must be hashed again (a fresh
clone, another machine, a touched store). Before, even a status that hits the database still
walks and stats every file of the store; after, it reads one small parquet file.
Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STORE = "data/store.zarr"
LISTING = "tables/arrays.parquet"

# The stage command of both repositories: writes the store from params.yaml's seed, skipping the
# arrays already finished (zarr.json is written last), and with --listing the listing table.
MAKE_STORE = '''\
import argparse, hashlib, json, os, random
import yaml

p = yaml.safe_load(open("params.yaml"))["store"]
ap = argparse.ArgumentParser()
ap.add_argument("--listing")
args = ap.parse_args()
root = "data/store.zarr"
group = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}})
os.makedirs(root + "/frames", exist_ok=True)
for path in (root + "/zarr.json", root + "/frames/zarr.json"):
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(group)
rows = {"array": [], "fingerprint": [], "num_frames": []}
for i in range(p["arrays"]):
    vid = "video_%06d" % i
    array = "frames/" + vid
    key = "%s:%s:%d:%d" % (p["seed"], array, p["shards"], p["shard_bytes"])
    fingerprint = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
    num_frames = 48 + i % 200
    folder = os.path.join(root, array)
    if not os.path.exists(folder + "/zarr.json"):
        rng = random.Random(key)
        for s in range(p["shards"]):
            os.makedirs("%s/c/%d/0/0" % (folder, s), exist_ok=True)
            with open("%s/c/%d/0/0/0" % (folder, s), "wb") as f:
                f.write(rng.randbytes(p["shard_bytes"]))
        meta = {"shape": [num_frames, 128, 170, 3], "data_type": "uint8",
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [256, 128, 170, 3]}},
                "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
                "fill_value": 0, "codecs": [{"name": "sharding_indexed", "configuration": {
                    "chunk_shape": [1, 128, 170, 3], "codecs": [{"name": "mscl.image"}, {"name": "crc32c"}],
                    "index_codecs": [{"name": "bytes"}, {"name": "crc32c"}], "index_location": "end"}}],
                "attributes": {"video_id": vid, "fingerprint": fingerprint, "num_frames": num_frames,
                               "store_version": 1},
                "dimension_names": ["t", "y", "x", "c"], "zarr_format": 3, "node_type": "array"}
        with open(folder + "/zarr.json", "w") as f:
            json.dump(meta, f)
    rows["array"].append(array)
    rows["fingerprint"].append(fingerprint)
    rows["num_frames"].append(num_frames)
if args.listing:
    import pyarrow as pa, pyarrow.parquet as pq
    os.makedirs(os.path.dirname(args.listing), exist_ok=True)
    pq.write_table(pa.table(rows), args.listing)
'''

SAMPLE_BEFORE = (
    "python -c \"import os, json; "
    "json.dump({'arrays': len(os.listdir('data/store.zarr/frames')) - 1}, open('sample.json', 'w'))\""
)
SAMPLE_AFTER = (
    "python -c \"import json, pyarrow.parquet as pq; "
    "json.dump({'arrays': pq.read_metadata('tables/arrays.parquet').num_rows}, open('sample.json', 'w'))\""
)


def log(msg: str) -> None:
    print(f"[dvc_store] {msg}", file=sys.stderr, flush=True)


def dvc_bin() -> str:
    return str(Path(sys.executable).parent / "dvc")


def tool_env() -> dict[str, str]:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("DVC_SITE_CACHE_DIR", None)  # each repository's own, set in its config
    return env


def call(args: list[str], cwd: Path) -> tuple[float, str]:
    """Run a command in cwd, fail loudly on error, return its wall time in seconds and stdout."""
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=tool_env(), capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(args)} in {cwd}")
    return elapsed, proc.stdout


def timed_up_to_date(args: list[str], cwd: Path) -> float:
    """Wall time of a dvc status / repro that must find nothing to do (else the number is wrong)."""
    elapsed, out = call(args, cwd)
    if "up to date" not in out:
        raise SystemExit(f"expected nothing to do from {' '.join(args)} in {cwd}, got:\n{out}")
    return elapsed


def dvc_yaml(variant: str) -> str:
    if variant == "before":
        decode_cmd, decode_out = "python make_store.py", f"{STORE}/frames:\n          persist: true"
        sample_dep, sample_cmd = f"{STORE}/frames", SAMPLE_BEFORE
    else:
        decode_cmd, decode_out = f"python make_store.py --listing {LISTING}", LISTING
        sample_dep, sample_cmd = LISTING, SAMPLE_AFTER
    return (
        "stages:\n"
        "  decode:\n"
        f"    cmd: {decode_cmd}\n"
        "    deps:\n      - make_store.py\n"
        "    params:\n      - store\n"
        f"    outs:\n      - {decode_out}\n"
        "  sample:\n"
        f"    cmd: {json.dumps(sample_cmd)}\n"
        f"    deps:\n      - {sample_dep}\n"
        "    outs:\n      - sample.json\n"
    )


def make_repo(root: Path, variant: str, args: argparse.Namespace) -> Path:
    repo = root / variant
    repo.mkdir()
    (repo / ".gitignore").write_text("*.zarr/\n")  # as the project's .gitignore
    (repo / "make_store.py").write_text(MAKE_STORE)
    (repo / "params.yaml").write_text(
        f"store:\n  seed: {args.seed}\n  arrays: {args.arrays}\n"
        f"  shards: {args.shards}\n  shard_bytes: {args.shard_bytes}\n"
    )
    (repo / "dvc.yaml").write_text(dvc_yaml(variant))
    call(["git", "init", "-q"], repo)
    call([dvc_bin(), "init", "-q"], repo)
    call([dvc_bin(), "config", "core.analytics", "false"], repo)
    call([dvc_bin(), "config", "core.site_cache_dir", str(root / f"site_cache_{variant}")], repo)
    return repo


def tree_size(path: Path) -> tuple[int, int]:
    """(bytes, files) of the regular files under path."""
    total = count = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_size
            count += 1
    return total, count


def tree_digest(path: Path) -> str:
    """One hash of every file's relative path and bytes, to check both stores are the same."""
    h = hashlib.blake2b(digest_size=16)
    for dirpath, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = Path(dirpath, name)
            h.update(str(full.relative_to(path)).encode() + b"\0" + full.read_bytes())
    return h.hexdigest()


def state_dbs(site_cache: Path) -> list[Path]:
    return list(site_cache.glob("**/hashes/local/cache.db"))


def state_entries(site_cache: Path) -> int:
    total = 0
    for db in state_dbs(site_cache):
        with sqlite3.connect(db) as con:
            total += con.execute("SELECT COUNT(*) FROM Cache").fetchone()[0]
    return total


def drop_state(site_cache: Path) -> None:
    for db in state_dbs(site_cache):
        shutil.rmtree(db.parent)


def repeat(args: list[str], cwd: Path, n: int) -> list[float]:
    return [round(timed_up_to_date(args, cwd), 3) for _ in range(n)]


def measure(root: Path, variant: str, args: argparse.Namespace) -> tuple[dict, Path]:
    repo = make_repo(root, variant, args)
    site_cache = root / f"site_cache_{variant}"
    log(f"{variant}: first dvc repro ({args.arrays} arrays)")
    first, _ = call([dvc_bin(), "repro", "-q"], repo)
    log(f"{variant}: first repro {first:.1f} s; dvc status x{args.repeats}")
    status = repeat([dvc_bin(), "status"], repo, args.repeats)
    log(f"{variant}: status {status}; no-op dvc repro x{args.repeats}")
    noop = repeat([dvc_bin(), "repro"], repo, args.repeats)
    entries = state_entries(site_cache)
    drop_state(site_cache)
    no_state = timed_up_to_date([dvc_bin(), "status"], repo)
    log(f"{variant}: no-op repro {noop}; status without state {no_state:.2f} s")
    cache_bytes, cache_files = tree_size(repo / ".dvc" / "cache")
    result = {
        "first_repro_s": round(first, 3),
        "status_s": status,
        "status_median_s": round(statistics.median(status), 3),
        "status_first_s": status[0],
        "status_rest_median_s": round(statistics.median(status[1:]), 3) if status[1:] else None,
        "status_no_state_s": round(no_state, 3),
        "state_entries": entries,
        "noop_repro_s": noop,
        "noop_repro_median_s": round(statistics.median(noop), 3),
        "cache_bytes": cache_bytes,
        "cache_files": cache_files,
    }
    return result, repo


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def dvc_version() -> str:
    out = subprocess.run([dvc_bin(), "--version"], env=tool_env(), capture_output=True, text=True)
    return out.stdout.strip()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arrays", type=int, default=10000, help="arrays in the store (default 10000)")
    ap.add_argument("--shards", type=int, default=2, help="shard files per array (default 2)")
    ap.add_argument("--shard-bytes", type=int, default=4096, help="bytes of each shard (default 4096)")
    ap.add_argument("--repeats", type=int, default=3, help="dvc status / no-op repro calls (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the temp repositories")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="dvc_store_bench_"))
    log(f"work folder {root}")
    try:
        before, repo_before = measure(root, "before", args)
        after, repo_after = measure(root, "after", args)
        store_bytes, store_files = tree_size(repo_before / STORE)
        same = tree_digest(repo_before / STORE) == tree_digest(repo_after / STORE)
        report = {
            "arrays": args.arrays,
            "files_in_store": store_files,
            "store_bytes": store_bytes,
            "stores_identical": same,
            "before": before,
            "after": after,
            "ratios": {
                "status_before_over_after": ratio(before["status_median_s"], after["status_median_s"]),
                "noop_repro_before_over_after": ratio(
                    before["noop_repro_median_s"], after["noop_repro_median_s"]
                ),
                "cache_bytes_before_over_after": ratio(before["cache_bytes"], after["cache_bytes"]),
                "first_repro_before_over_after": ratio(
                    before["first_repro_s"], after["first_repro_s"]
                ),
                "status_no_state_before_over_after": ratio(
                    before["status_no_state_s"], after["status_no_state_s"]
                ),
            },
            "dvc_version": dvc_version(),
        }
        print(json.dumps(report, indent=2))
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
