"""cli.py: every command documents its options; doctor reports FFmpeg; the stages run from the shell."""

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

import cli
from conftest import REPO
from pipeline.storage.tables import read_table

runner = CliRunner()


@pytest.mark.parametrize(
    "command, options",
    [("make-demo", ["--params", "--out", "--scheduler", "--workers"]),
     ("probe", ["--params", "--videos", "--out", "--scheduler", "--workers"]),
     ("decode", ["--params", "--manifest", "--videos", "--store", "--out", "--scheduler", "--workers"])],
)  # fmt: skip
def test_help_lists_every_option(command, options):
    result = runner.invoke(cli.app, [command, "--help"])
    assert result.exit_code == 0
    for option in options:
        assert option in result.output


def test_export_mmaction_runs_on_the_params_data(demo_sampled, tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update(sample=str(demo_sampled / "sample"), decode=str(demo_sampled / "decode"), store=str(demo_sampled / "store.zarr"),
                       labels=str(demo_sampled / "demo" / "labels.parquet"))  # fmt: skip
    raw["flow"]["method"] = "dis"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    result = runner.invoke(cli.app, ["export-mmaction", "--params", str(params), "--out", str(tmp_path / "out"), "--rawframes", "--flow"])
    assert result.exit_code == 0, result.output
    assert "clips of 12 videos, 6 classes" in result.output and (tmp_path / "out" / "clips.txt").is_file()
    assert len(list((tmp_path / "out" / "rawframes").iterdir())) == 12
    # ... and back in: the exported tree imported into another store.
    raw["data"].update(store=str(tmp_path / "store.zarr"), decode=str(tmp_path / "decode"), flow=str(tmp_path / "flow"))
    params.write_text(yaml.safe_dump(raw))
    result = runner.invoke(cli.app, ["import-rawframes", str(tmp_path / "out" / "rawframes"), "--params", str(params), "--scheduler", "sync"])
    assert result.exit_code == 0, result.output
    assert "import: videos 12, unchanged 0, with flow 12" in result.output
    assert len(read_table(tmp_path / "flow" / "videos.parquet")) == 12


def test_doctor_reports_ffmpeg_and_libraries():
    result = runner.invoke(cli.app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "ffmpeg" in result.output and "encoder libx264     yes" in result.output
    assert "TV-L1 (contrib optflow): yes" in result.output


def test_missing_videos_root_is_a_clear_error(tmp_path):
    result = runner.invoke(cli.app, ["probe", "--videos", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    assert "is not a folder: set data.videos" in result.output


def test_stages_run_from_the_shell_with_another_params_file(tmp_path):
    params = tmp_path / "my_params.yaml"
    params.write_text(yaml.safe_dump({
        "data": {"videos": str(tmp_path / "demo" / "videos"), "demo": str(tmp_path / "demo"),
                 "manifest": str(tmp_path / "manifest"), "store": str(tmp_path / "s.zarr"), "decode": str(tmp_path / "dec")},
        "make_demo": {"classes": ["zoom_in", "oscillate"], "videos_per_class": 1, "frames": 8, "width": 64, "height": 48},
        "decode": {"short_side": 32},
    }))  # fmt: skip
    for command in ("make-demo", "probe", "decode"):
        proc = subprocess.run([sys.executable, "cli.py", command, "--params", str(params), "--scheduler", "sync"],
                              cwd=REPO, capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(command)  # the summary, for people
    decoded = read_table(tmp_path / "dec" / "decoded.parquet").to_pylist()
    assert [(r["num_frames"], r["height"], r["width"]) for r in decoded] == [(8, 32, 43)] * 2


def params_for(tmp_path, demo_sampled, **data) -> Path:
    """The project's params.yaml with data.* pointed at the small demo run (and `data` over it)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update(videos=str(demo_sampled / "demo" / "videos"), manifest=str(demo_sampled / "manifest"),
                       store=str(demo_sampled / "store.zarr"), decode=str(demo_sampled / "decode"), flow=str(demo_sampled / "flow"),
                       sample=str(demo_sampled / "sample"), labels=str(demo_sampled / "demo" / "labels.parquet"),
                       train=str(tmp_path / "train"))  # fmt: skip
    raw["data"].update({key: str(value) for key, value in data.items()})
    raw["flow"]["method"] = "dis"
    path = tmp_path / f"params-{len(list(tmp_path.glob('params-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def user_error_cases(tmp_path: Path, demo_sampled: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments of cli.py, what the first line of stderr starts with): one per kind of
    user error the fault runs found ending in a traceback, or in a crash."""
    users = tmp_path / "users-folder"
    (users / "frames").mkdir(parents=True)
    (users / "holiday.jpg").write_bytes(b"mine")
    labels = read_table(demo_sampled / "demo" / "labels.parquet").to_pylist()
    labels[3]["label"] = "aaa\nbbb"
    pq.write_table(pa.Table.from_pylist(labels), tmp_path / "labels.parquet")
    ucf = tmp_path / "ucfTrainTestlist"
    ucf.mkdir()
    (ucf / "classInd.txt").write_text("1 rotate\n")
    (ucf / "trainlist01.txt").write_text("rotate/rotate_000.mp4 1\nzoom_in/zoom_in_000.mp4 7\n")
    (ucf / "testlist01.txt").write_text("")
    exported = tmp_path / "exported"
    exported.mkdir()
    (exported / "clips.txt").write_text("my own list\n")
    params = lambda **data: ["--params", str(params_for(tmp_path, demo_sampled, **data))]  # noqa: E731
    return {
        "store not ours": (["decode", *params(store=users)], f"error: {users}: is not this pipeline's store"),
        "store at the root": (["decode", *params(store="/")], "error: /: is the file system's root"),
        "store is the project": (["extract-flow", *params(store=REPO)], f"error: {REPO}: is the project's folder"),
        "import into a folder not a store": (["import-rawframes", str(tmp_path), *params(store=users)],
                                             f"error: {users}: is not this pipeline's store"),
        "export into a folder not export's": (["export-mmaction", *params(), "--out", str(exported)],
                                              f"error: {exported}: is not empty and export-mmaction did not write it"),
        "a label of two lines": (["export-mmaction", *params(labels=tmp_path / "labels.parquet"), "--out", str(tmp_path / "e2")],
                                 f"error: {tmp_path / 'labels.parquet'}, row 3: label 'aaa\\nbbb' holds a line break"),
        "a class index not in classInd.txt": (["export-mmaction", *params(labels=ucf), "--out", str(tmp_path / "e3")],
                                              f"error: {ucf / 'trainlist01.txt'}:2: class index 7 is not in classInd.txt"),
        "a missing table": (["decode", *params(manifest=tmp_path / "nowhere")],
                            f"error: {tmp_path / 'nowhere' / 'videos.parquet'} does not exist; run the stage that writes it first"),
    }


CASES = ["store not ours", "store at the root", "store is the project", "import into a folder not a store",
         "export into a folder not export's", "a label of two lines", "a class index not in classInd.txt", "a missing table"]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_every_user_error_is_one_line_and_exit_status_1(case, demo_sampled, tmp_path):
    """Before: SplitError, ValueError, cv2.error and the refusals ended in tracebacks (44 lines for
    a class index missing from classInd.txt), or wrote into the user's folder."""
    arguments, first_line = user_error_cases(tmp_path, demo_sampled)[case]
    result = subprocess.run([sys.executable, "cli.py", *arguments], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(first_line), lines
    assert len([line for line in lines if line.startswith("error:")]) == 1


def test_too_few_clips_for_a_batch_is_one_line(demo_sampled, tmp_path):
    """Before: a traceback whose last line was good ('... cannot fill one batch of 16; lower train.batch_size')."""
    params = params_for(tmp_path, demo_sampled)
    raw = yaml.safe_load(params.read_text())
    raw["train"].update(batch_size=4096, num_workers=0)
    params.write_text(yaml.safe_dump(raw))
    result = subprocess.run([sys.executable, "cli.py", "train", "--params", str(params), "--method", "rgb_only"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].endswith("cannot fill one batch of 4096; lower train.batch_size")
