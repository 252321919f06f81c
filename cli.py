"""Command line of the MSCL data pipeline: one command per DVC stage, plus tools for people.

`dvc repro` runs these same commands (see dvc.yaml); run `python cli.py COMMAND --help` for options.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from schemas.params import Params, ParamsError, load_params
from schemas.paths import is_url

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)

ParamsOpt = typer.Option(Path("params.yaml"), "--params", help="params file to read (validated against schemas/params.py)")
SchedulerOpt = typer.Option(
    None, "--scheduler", help='dask scheduler: "local" (default: a local cluster), "sync" (in-process), or an address like tcp://host:8786'
)
WorkersOpt = typer.Option(None, "--workers", min=1, help="worker processes of the local cluster (default: one per core)")
VerifyOpt = typer.Option(False, "--verify", help="read every chunk of each finished array before skipping it, and rewrite "
                         "a damaged one (without it: metadata, shard files and their indexes are checked)")


class _TqdmHandler(logging.Handler):
    """Log lines printed above the progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def _setup(params_file: Path) -> Params:
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    for noisy in ("distributed", "bokeh", "tornado", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        params = load_params(params_file)
    except ParamsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    from pipeline.storage import fsconfig

    fsconfig.configure(params.data.storage_options)  # here, in the processes started from here, and on a cluster's workers
    return params


def _finish(summary, params: Params) -> None:
    typer.echo(summary.text())
    from stages.common import record_run

    record_run(summary, params.data.runs)  # for the report page: when it ran, how long it took


@app.command("make-demo")
def make_demo(
    params_file: Path = ParamsOpt,
    out: Optional[Path] = typer.Option(None, help="output folder (default: data.demo)"),
    scheduler: Optional[str] = SchedulerOpt,
    workers: Optional[int] = WorkersOpt,
) -> None:
    """Generate the synthetic demo dataset: labelled videos with known motion (params: make_demo)."""
    from stages import make_demo as stage

    params = _setup(params_file)
    _finish(stage.run(params.make_demo, out or params.data.demo, scheduler=scheduler, workers=workers), params)


@app.command()
def probe(
    params_file: Path = ParamsOpt,
    videos: Optional[str] = typer.Option(None, help="videos root, scanned recursively: a folder or an fsspec URL (default: data.videos)"),
    out: Optional[Path] = typer.Option(None, help="output folder for videos.parquet and failures.parquet (default: data.manifest)"),
    scheduler: Optional[str] = SchedulerOpt,
    workers: Optional[int] = WorkersOpt,
) -> None:
    """Scan the videos root and write the manifest of usable videos and the failures (params: probe)."""
    from stages import probe as stage

    params = _setup(params_file)
    root = videos or params.data.videos
    if not is_url(root) and not Path(root).is_dir():
        typer.echo(f"videos root {root} is not a folder: set data.videos in {params_file} or pass --videos", err=True)
        raise typer.Exit(1)
    _finish(stage.run(params.probe, root, out or params.data.manifest, scheduler=scheduler, workers=workers), params)


@app.command()
def decode(
    params_file: Path = ParamsOpt,
    manifest: Optional[Path] = typer.Option(None, help="folder holding videos.parquet (default: data.manifest)"),
    videos: Optional[str] = typer.Option(None, help="videos root the manifest's paths are relative to, a folder or an fsspec URL "
                                         "(default: data.videos)"),
    store: Optional[str] = typer.Option(None, help="Zarr store, a folder or an fsspec URL; frames go to its frames/ group (default: data.store)"),
    out: Optional[Path] = typer.Option(None, help="output folder for decoded.parquet and failures.parquet (default: data.decode)"),
    scheduler: Optional[str] = SchedulerOpt,
    workers: Optional[int] = WorkersOpt,
    verify: bool = VerifyOpt,
) -> None:
    """Decode every usable video into a Zarr frame array, resumably (params: decode)."""
    from stages import decode as stage

    params = _setup(params_file)
    data = params.data
    summary = stage.run(
        params.decode, manifest or data.manifest, videos or data.videos, store or data.store, out or data.decode,
        scheduler=scheduler, workers=workers, verify=verify,
    )  # fmt: skip
    _finish(summary, params)


@app.command("extract-flow")
def extract_flow(
    params_file: Path = ParamsOpt,
    method: Optional[str] = typer.Option(
        None, help="flow method: tvl1 (OpenCV TV-L1, defaults as OpenCV/denseflow/mmaction2), tvl1_fast (the speed "
        "preset: warm start, 3 scales, 3 warps), dis, farneback, raft_small, raft_large (default: flow.method)"),
    decoded: Optional[Path] = typer.Option(None, help="folder holding decoded.parquet (default: data.decode)"),
    store: Optional[str] = typer.Option(None, help="Zarr store, a folder or an fsspec URL: reads frames/, writes flow/<method>/ (default: data.store)"),
    out: Optional[Path] = typer.Option(None, help="output folder for videos.parquet, stats.parquet, failures.parquet (default: data.flow)"),
    videos: Optional[str] = typer.Option(None, help="videos root, a folder or an fsspec URL: frames stored lossy are decoded again from it "
                                         "(default: data.videos)"),
    scheduler: Optional[str] = SchedulerOpt,
    workers: Optional[int] = WorkersOpt,
    verify: bool = VerifyOpt,
) -> None:
    """Compute optical flow for every decoded video, resumably (params: flow).

    With frames stored lossy (decode.codec jpeg, ...), each video is decoded again from the videos
    root, so the flow is computed from the decoder's pixels, as from lossless frames.

    Each method's parameters are in the section of params.yaml named after it (flow.tvl1, flow.tvl1_fast,
    flow.dis, flow.farneback, flow.raft_small, flow.raft_large); flow.pairs_per_task cuts long videos into
    parallel tasks. RAFT needs weights on disk: flow.raft_small.weights is a checkpoint path, or
    "torchvision" for torchvision's cache; nothing is downloaded.
    """
    from stages import flow as stage

    params = _setup(params_file)
    flow_params = params.flow if method is None else _with_method(params.flow, method)
    data = params.data
    summary = stage.run(flow_params, decoded or data.decode, store or data.store, out or data.flow,
                        scheduler=scheduler, workers=workers, videos_root=videos or data.videos, verify=verify)  # fmt: skip
    _finish(summary, params)


def _with_method(flow_params, method: str):
    from schemas.params import FlowParams, validate

    return validate(FlowParams, {**flow_params.model_dump(by_alias=True), "method": method}, source="--method", prefix="flow")


@app.command()
def sample(
    params_file: Path = ParamsOpt,
    flowed: Optional[Path] = typer.Option(None, help="folder holding the flow stage's videos.parquet (default: data.flow)"),
    store: Optional[str] = typer.Option(None, help="Zarr store with the flow, a path or an fsspec URL (default: data.store)"),
    out: Optional[Path] = typer.Option(None, help="output folder for frames.parquet, clips.parquet, failures.parquet (default: data.sample)"),
    scheduler: Optional[str] = SchedulerOpt,
    workers: Optional[int] = WorkersOpt,
) -> None:
    """Score every clip start with Motion Differential Sampling and write the clip index (params: sample)."""
    from stages import sample as stage

    params = _setup(params_file)
    data = params.data
    _finish(stage.run(params.sample, flowed or data.flow, store or data.store, out or data.sample, scheduler=scheduler, workers=workers), params)


@app.command("inspect-index")
def inspect_index(
    params_file: Path = ParamsOpt,
    index: Optional[Path] = typer.Option(None, help="folder holding clips.parquet and frames.parquet (default: data.sample)"),
    video: Optional[str] = typer.Option(None, help="show one video: its candidate starts and scores"),
    plot: Optional[Path] = typer.Option(None, help="with --video: draw its score curve, selected clips shaded, to this PNG"),
    top: Optional[int] = typer.Option(None, min=1, help="the N highest and N lowest scoring clips"),
    output: str = typer.Option("table", "--format", help="table (for people), csv or json (for scripts)"),
) -> None:
    """Look at the clip index: a summary, one video (--video, --plot), or the extremes (--top)."""
    from tools import inspect_index as inspect

    params = _setup(params_file)
    folder = index or Path(params.data.sample)
    if output not in ("table", "csv", "json"):
        typer.echo(f"--format must be table, csv or json, got {output!r}", err=True)
        raise typer.Exit(2)
    try:
        view = inspect.load(folder)
        if video is not None:
            frame = inspect.video_view(view, video)
            if plot is not None:
                inspect.plot_video(view, video, plot)
                typer.echo(f"wrote {plot}", err=True)
        elif top is not None:
            frame = inspect.top_view(view, top)
        else:
            frame = inspect.summary_view(view)
    except (FileNotFoundError, KeyError) as exc:
        typer.echo(str(exc).strip("'\""), err=True)
        raise typer.Exit(1) from None
    inspect.emit(frame, output)


@app.command("show-flow")
def show_flow(
    video_id: str = typer.Argument(..., help="video id (see data/decode/decoded.parquet)"),
    params_file: Path = ParamsOpt,
    method: Optional[str] = typer.Option(None, help="which flow to show (default: flow.method)"),
    store: Optional[str] = typer.Option(None, help="Zarr store, a folder or an fsspec URL (default: data.store)"),
    out: Path = typer.Option(Path("flow.png"), help="PNG strip to write; a .mp4 name writes a video instead"),
    frames: int = typer.Option(6, min=1, help="how many frames the PNG strip shows, evenly spaced"),
) -> None:
    """Draw frames and their flow (Middlebury colour wheel) side by side, as a PNG strip or a video."""
    from pipeline.storage.store import open_flow, open_frames
    from tools.show_flow import write_strip, write_video

    params = _setup(params_file)
    store_path = store or params.data.store
    chosen = method or params.flow.method
    try:
        rgb, flow = open_frames(store_path, video_id), open_flow(store_path, chosen, video_id)
    except FileNotFoundError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    if out.suffix.lower() in (".mp4", ".mkv", ".webm"):
        write_video(rgb, flow, out, fps=tuple(rgb.attrs["fps"]))
    else:
        write_strip(rgb, flow, out, count=frames)
    typer.echo(f"wrote {out}")


@app.command()
def train(
    params_file: Path = ParamsOpt,
    method: str = typer.Option("mscl", help="mscl, or rgb_only (plain MoCo on two RGB clips: the baseline)"),
    index: Optional[Path] = typer.Option(None, help="clip index (default: data.sample/clips.parquet)"),
    store: Optional[str] = typer.Option(None, help="Zarr store, a path or an fsspec URL (default: data.store)"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: data.train/METHOD)"),
    stop_after: Optional[int] = typer.Option(None, min=1, help="stop after this many steps, keeping the checkpoint (smoke runs)"),
) -> None:
    """Train MSCL or the RGB-only baseline; resumes a killed run (params: train, dataset). Under
    `torchrun --nproc_per_node N cli.py train` it trains with DDP on N processes."""
    from stages import train as stage

    params = _setup(params_file)
    if method not in ("mscl", "rgb_only"):
        typer.echo(f"--method {method!r}: allowed: mscl, rgb_only", err=True)
        raise typer.Exit(2)
    data = params.data
    summary = stage.run(params, method, index or Path(data.sample) / "clips.parquet", store or data.store,
                        out or Path(data.train) / method, stop_after=stop_after)  # fmt: skip
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 reports
        _finish(summary, params)


@app.command()
def evaluate(
    params_file: Path = ParamsOpt,
    trained: Optional[Path] = typer.Option(None, help="folder of the train stage's outputs, one subfolder per method (default: data.train)"),
    labels: Optional[Path] = typer.Option(None, help="labels table (relpath, label), or UCF101's or HMDB51's split folder (default: data.labels)"),
    out: Optional[Path] = typer.Option(None, help="output folder for metrics.json (default: data.evaluate)"),
) -> None:
    """Retrieval R@k, linear probe (and kNN) for MSCL, the RGB-only baseline and random weights (params: evaluate)."""
    from stages import evaluate as stage

    params = _setup(params_file)
    data = params.data
    _finish(stage.run(params, trained or data.train, labels or data.labels, data.decode, data.store, out or data.evaluate), params)


@app.command()
def report(
    params_file: Path = ParamsOpt,
    out: Optional[Path] = typer.Option(None, help="output folder for index.html and its images (default: data.report)"),
) -> None:
    """One page of what the run made: videos and failures, flow, MDS selection, training and metrics (params: report).
    Reads the stage outputs only; runs after sample alone too."""
    from stages import report as stage

    params = _setup(params_file)
    _finish(stage.run(params, out or params.data.report, params_file=params_file), params)


@app.command("import-rawframes")
def import_rawframes(
    rawframes: Path = typer.Argument(..., help="root of an mmaction2/denseflow tree: <video>/img_00001.jpg, flow_x_00001.jpg, flow_y_00001.jpg"),
    params_file: Path = ParamsOpt,
    bound: float = typer.Option(20.0, min=0.1, help="px the flow images' 0..255 span as +-bound (mmaction2's tools: 20; denseflow's own default: 32)"),
    flow: bool = typer.Option(True, "--flow/--no-flow", help="import the flow images too (else frames only; run extract-flow after)"),
    fps: float = typer.Option(30.0, min=0.1, help="frame rate to record for the frames (rawframes carry none)"),
    scheduler: Optional[str] = SchedulerOpt,
    workers: Optional[int] = WorkersOpt,
    verify: bool = VerifyOpt,
) -> None:
    """Existing rawframes (and 8-bit flow) into the store as decode and extract-flow would write them (data.store, data.decode,
    data.flow; flow under flow.method, marked imported), so sample, train and evaluate run on them unchanged. Symlinks are
    followed as probe.follow_symlinks says; images larger than decode.memory_mb allows are refused."""
    from stages.import_rawframes import run

    params = _setup(params_file)
    data = params.data
    _finish(run(rawframes, data.store, data.decode, data.flow, params.decode, params.flow, bound=bound if flow else None, fps=fps,
                follow_symlinks=params.probe.follow_symlinks, verify=verify, scheduler=scheduler, workers=workers), params)  # fmt: skip


@app.command("export-mmaction")
def export_mmaction(
    params_file: Path = ParamsOpt,
    out: Path = typer.Option(Path("data/export/mmaction"), help="output folder for the annotation lists (and rawframes/): new, "
                             "empty, or written by export-mmaction before (a folder holding other files is refused)"),
    rawframes: bool = typer.Option(False, "--rawframes", help="also write every frame of each video with a selected clip as JPEG files"),
    flow: bool = typer.Option(False, "--flow", help="with --rawframes: also its flow as flow_x/flow_y JPEGs (8 bits over +-bound)"),
    bound: float = typer.Option(20.0, min=0.1, help="px: the flow mapped onto 0..255 (denseflow's and mmaction2's 20)"),
    quality: int = typer.Option(95, min=1, max=100, help="JPEG quality of the rawframes"),
) -> None:
    """MDS-selected clips as mmaction2 annotation lists (RawframeDataset, with_offset=True), optionally as a rawframes tree."""
    from pipeline.interop.mmaction import export_mmaction as export

    params = _setup(params_file)
    data = params.data
    counts = export(data.sample, data.decode, data.labels, params.evaluate.split, data.store, out, rawframes=rawframes,
                    flow_method=params.flow.method if flow else None, bound=bound, quality=quality)  # fmt: skip
    typer.echo(f"export-mmaction: {counts['clips']} clips of {counts['videos']} videos, {counts['classes']} classes -> {out}"
               + (f"; {counts['frames']} frames as rawframes" if "frames" in counts else "")
               + (f"; {counts['rawframes_left']} folders of an earlier export left in rawframes/: they hold files export did "
                  "not write" if "rawframes_left" in counts else ""), err=True)  # fmt: skip


@app.command()
def doctor() -> None:
    """Report the FFmpeg binary and library versions the pipeline will use."""
    from importlib.metadata import PackageNotFoundError, version

    from pipeline.io.ffmpeg_binary import FFmpegNotFound, ffmpeg_binary, has_encoder
    from pipeline.parallel import default_workers

    ok = True
    try:
        binary = ffmpeg_binary()
        typer.echo(f"ffmpeg      {binary.version}  ({binary.source}: {binary.path})")
        for encoder in ("libx264", "mpeg4", "libvpx-vp9"):
            typer.echo(f"  encoder {encoder:<11} {'yes' if has_encoder(encoder) else 'no (demo/fixture encoding needs it)'}")
    except FFmpegNotFound as exc:
        ok = False
        typer.echo(f"ffmpeg      MISSING: {exc}")
    for package in ("numpy", "zarr", "pyarrow", "dask", "distributed", "opencv-contrib-python-headless", "torch", "torchvision", "dvc", "typer", "pydantic"):
        try:
            typer.echo(f"{package:<11} {version(package)}")
        except PackageNotFoundError:
            ok = False
            typer.echo(f"{package:<11} MISSING")
    try:
        import cv2

        has_tvl1 = hasattr(cv2, "optflow") and hasattr(cv2.optflow, "DualTVL1OpticalFlow_create")
        typer.echo(f"opencv      {cv2.__version__}, TV-L1 (contrib optflow): {'yes' if has_tvl1 else 'NO'}")
        ok &= has_tvl1
    except ImportError:
        ok = False
    typer.echo(f"cores       {default_workers()}")
    if not ok:
        raise typer.Exit(1)


def main() -> None:
    """The app, with every error a user can fix (schemas.errors.UserError: a refused table row or
    store, a store in use, a full disk, a damaged array, a bad split list, too little data, ...)
    printed as one line, `error: <what, where, and the fix>`, and exit status 1; a traceback only
    for a bug."""
    from pipeline.storage.faults import describe, is_environment
    from schemas.errors import UserError

    try:
        app()
    except UserError as exc:
        import stages.common  # noqa: F401  (its repair commands end every message about damaged data)

        typer.echo(f"error: {one_line(exc)}", err=True)
        sys.exit(1)
    except OSError as exc:
        if not is_environment(exc):
            raise
        typer.echo(f"error: {describe(exc, None, exc.filename or '?')}", err=True)
        sys.exit(1)


def one_line(exc: BaseException) -> str:
    """The message on one line (a message quoting a file's or a library's text may hold newlines)."""
    return " ".join(part.strip() for part in str(exc).splitlines() if part.strip())


if __name__ == "__main__":
    main()
