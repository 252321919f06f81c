"""Decode and flow writing to object storage against local disk, and on 1 against 2 workers.

    python bench/object_store.py [--videos N] [--frames F] [--method dis]

Makes UCF101-like inputs once (320x240 H.264, 25 fps, under data/bench/decode/, as bench/decode.py),
starts a local S3 server (moto's, on 127.0.0.1, in this process), then measures in this one run the
decode stage and the flow stage (frames/s and pairs/s, cluster start-up included) for:
  - local: videos and store on local disk (the baseline);
  - s3: the videos read from the bucket (probe, and FFmpeg through presigned URLs) and the store
    written to it (zarr.json last, under a lease);
each with a local dask cluster of 1 and of 2 worker processes. Prints one JSON object with the rates
and the ratios s3/local and 2 workers/1 worker.

The S3 server runs in this process on the same cores as the workers, and answers from memory: the
ratios say what the object-store code path costs here (requests, no rename, listing), not what a
real bucket's latency and bandwidth will be.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import make_inputs  # noqa: E402

from pipeline.storage.tables import read_table  # noqa: E402
from schemas.params import DecodeParams, FlowParams, ProbeParams  # noqa: E402
from stages import decode as decode_stage  # noqa: E402
from stages import flow as flow_stage  # noqa: E402
from stages import probe as probe_stage  # noqa: E402

BUCKET = "mscl-bench"


def start_s3() -> tuple[object, object]:
    """A moto S3 server on 127.0.0.1 with throwaway credentials in this process's environment
    (the local cluster's workers inherit it); (server, s3fs filesystem)."""
    import s3fs
    from moto import server as moto_server

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[name]
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}", "AWS_CONFIG_FILE": os.devnull,
                       "AWS_SHARED_CREDENTIALS_FILE": os.devnull})  # fmt: skip
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    return server, fs


def run_once(videos: str, store: str, work: Path, workers: int, method: str) -> dict[str, float]:
    """probe, decode and extract-flow of `videos` into a new `store`; rates of the last two."""
    probe_stage.run(ProbeParams(), videos, work / "manifest", workers=workers)
    frames = sum(row["num_frames"] for row in read_table(work / "manifest" / "videos.parquet").to_pylist())
    started = time.perf_counter()
    decode_stage.run(DecodeParams(), work / "manifest", videos, store, work / "decode", workers=workers)
    decode_s = time.perf_counter() - started
    started = time.perf_counter()
    flow_stage.run(FlowParams(method=method), work / "decode", store, work / "flow", workers=workers, videos_root=videos)
    flow_s = time.perf_counter() - started
    pairs = sum(row["num_pairs"] for row in read_table(work / "flow" / "videos.parquet").to_pylist())
    return {"decode_frames_per_s": round(frames / decode_s, 1), "flow_pairs_per_s": round(pairs / flow_s, 1),
            "decode_s": round(decode_s, 2), "flow_s": round(flow_s, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--method", default="dis", help="flow method (dis: fast enough that the writes show)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the S3 server's line per request
    local_videos = make_inputs(args.videos, args.frames)
    server, fs = start_s3()
    try:
        fs.put(str(local_videos), f"{BUCKET}/videos", recursive=True)
        results: dict[str, dict] = {}
        with tempfile.TemporaryDirectory() as scratch:
            for workers in (1, 2):
                for where in ("local", "s3"):
                    work = Path(scratch) / f"{where}-{workers}"
                    work.mkdir()
                    if where == "local":
                        videos, store = str(local_videos), str(work / "store.zarr")
                    else:
                        videos, store = f"s3://{BUCKET}/videos", f"s3://{BUCKET}/store-{workers}.zarr"
                    print(f"{where}, {workers} worker(s)...", file=sys.stderr)
                    results[f"{where}_{workers}w"] = run_once(videos, store, work, workers, args.method)
                    shutil.rmtree(work, ignore_errors=True)
    finally:
        server.stop()

    def ratio(a: str, b: str, key: str) -> float:
        return round(results[a][key] / results[b][key], 3)

    out = {
        "videos": args.videos, "frames_per_video": args.frames, "method": args.method, "cores": os.cpu_count(), **results,
        "ratios": {
            **{f"s3_over_local_{w}w_{k}": ratio(f"s3_{w}w", f"local_{w}w", f"{k}_per_s") for w in (1, 2)
               for k in ("decode_frames", "flow_pairs")},
            **{f"2w_over_1w_{where}_{k}": ratio(f"{where}_2w", f"{where}_1w", f"{k}_per_s") for where in ("local", "s3")
               for k in ("decode_frames", "flow_pairs")},
        },
    }  # fmt: skip
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
