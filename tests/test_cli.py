"""cli.py: every command documents its options; doctor reports FFmpeg; the stages run from the shell."""

import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

import cli
from conftest import REPO
from pipeline.tables import read_table

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
