"""Command line of the MSCL data pipeline: one command per DVC stage, plus tools for people.

`dvc repro` runs these same commands (see dvc.yaml); run `python cli.py COMMAND --help` for options.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from schemas.params import Params, ParamsError, load_params

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)

ParamsOpt = typer.Option(Path("params.yaml"), "--params", help="params file to read (validated against schemas/params.py)")
SchedulerOpt = typer.Option(
    None, "--scheduler", help='dask scheduler: "local" (default: a local cluster), "sync" (in-process), or an address like tcp://host:8786'
)
WorkersOpt = typer.Option(None, "--workers", min=1, help="worker processes of the local cluster (default: one per core)")


class _TqdmHandler(logging.Handler):
    """Log lines printed above the progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def _setup(params_file: Path) -> Params:
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    for noisy in ("distributed", "bokeh", "tornado"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return load_params(params_file)
    except ParamsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


def _finish(summary) -> None:
    typer.echo(summary.text())


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
    _finish(stage.run(params.make_demo, out or params.data.demo, scheduler=scheduler, workers=workers))


@app.command()
def probe(
    params_file: Path = ParamsOpt,
    videos: Optional[Path] = typer.Option(None, help="videos root, scanned recursively (default: data.videos)"),
    out: Optional[Path] = typer.Option(None, help="output folder for videos.parquet and failures.parquet (default: data.manifest)"),
    scheduler: Optional[str] = SchedulerOpt,
    workers: Optional[int] = WorkersOpt,
) -> None:
    """Scan the videos root and write the manifest of usable videos and the failures (params: probe)."""
    from stages import probe as stage

    params = _setup(params_file)
    root = videos or Path(params.data.videos)
    if not root.is_dir():
        typer.echo(f"videos root {root} is not a folder: set data.videos in {params_file} or pass --videos", err=True)
        raise typer.Exit(1)
    _finish(stage.run(params.probe, root, out or params.data.manifest, scheduler=scheduler, workers=workers))


@app.command()
def decode(
    params_file: Path = ParamsOpt,
    manifest: Optional[Path] = typer.Option(None, help="folder holding videos.parquet (default: data.manifest)"),
    videos: Optional[Path] = typer.Option(None, help="videos root the manifest's paths are relative to (default: data.videos)"),
    store: Optional[Path] = typer.Option(None, help="Zarr store; frames go to its frames/ group (default: data.store)"),
    out: Optional[Path] = typer.Option(None, help="output folder for decoded.parquet and failures.parquet (default: data.decode)"),
    scheduler: Optional[str] = SchedulerOpt,
    workers: Optional[int] = WorkersOpt,
) -> None:
    """Decode every usable video into a Zarr frame array, resumably (params: decode)."""
    from stages import decode as stage

    params = _setup(params_file)
    data = params.data
    summary = stage.run(
        params.decode, manifest or data.manifest, videos or data.videos, store or data.store, out or data.decode,
        scheduler=scheduler, workers=workers,
    )  # fmt: skip
    _finish(summary)


@app.command()
def doctor() -> None:
    """Report the FFmpeg binary and library versions the pipeline will use."""
    from importlib.metadata import PackageNotFoundError, version

    from pipeline.ffmpeg import FFmpegNotFound, ffmpeg_binary, has_encoder
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


if __name__ == "__main__":
    app()
