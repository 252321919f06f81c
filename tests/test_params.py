"""schemas/params.py: the repo's params.yaml validates, and bad params say what is wrong."""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import cli
from schemas.params import DecodeParams, Params, ParamsError, load_params

REPO = Path(__file__).parent.parent


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _keys(tree: dict) -> set[str]:
    return {key for key, _ in _flatten(tree)}


# The schema's defaults are the paper's; params.yaml sizes the demo for 2 CPU cores. These keys, and
# only these, differ (docs/results.md lists them with the paper's values).
DEMO_SIZED = {"flow.method", "dataset.crop_size", "dataset.cache_mb", "dataset.color_jitter_p", "dataset.grayscale_p",
              "dataset.blur_p", "dataset.crop_scale", "dataset.flow_camera", "train.head_bn", "train.encoder", "train.flow_width_ratio", "train.flow_blocks", "train.local_dim",
              "train.queue_size", "train.temperature", "train.key_momentum", "train.batch_size", "train.epochs",
              "train.lr", "train.warmup_epochs", "train.checkpoint_every", "train.num_workers"}


# The schema stores lossless; params.yaml stores as bench/storage.py chose (docs/storage.md).
STORAGE = {"decode.codec", "decode.quality", "flow.precision", "sample.flow_grid"}


def test_repo_params_file_is_valid_and_spells_out_every_key():
    params = load_params(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    defaults = Params().model_dump(mode="json", by_alias=True)
    assert _keys(raw) == _keys(defaults)  # every key written out, so the file documents them all
    ours = params.model_dump(mode="json", by_alias=True)
    paper = dict(_flatten(defaults))
    differing = {key for key, value in _flatten(ours) if value != paper[key]}
    assert differing <= DEMO_SIZED | STORAGE, differing - DEMO_SIZED - STORAGE


def _flatten(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_unknown_key_is_named_with_the_allowed_keys(tmp_path):
    with pytest.raises(ParamsError) as err:
        load_params(write(tmp_path, {"decode": {"shortside": 112}}))
    message = str(err.value)
    assert "decode.shortside = 112: unknown key" in message
    assert ("allowed keys: chunk_frames, codec, fps, frame_stride, max_frames, memory_mb, quality, shard_frames, short_side, "
            "timeout_s") in message


def test_unknown_section_is_named(tmp_path):
    with pytest.raises(ParamsError, match=r"decoder = .*unknown key; allowed keys: data, dataset, decode, evaluate, flow, make_demo, probe, report, sample, train"):
        load_params(write(tmp_path, {"decoder": {}}))


@pytest.mark.parametrize(
    "section, values, expected",
    [
        ("decode", {"short_side": -5}, r"decode\.short_side = -5: Input should be greater than or equal to 8"),
        ("decode", {"short_side": "big"}, r"decode\.short_side = 'big': Input should be a valid integer"),
        ("decode", {"fps": 10, "frame_stride": 2}, r"set either fps or frame_stride"),
        ("decode", {"chunk_frames": 8, "shard_frames": 20}, r"shard_frames \(20\) must be a multiple of chunk_frames \(8\)"),
        ("make_demo", {"classes": ["spin"]}, r"make_demo\.classes\.0 = 'spin': Input should be 'slide_horizontal'"),
        ("make_demo", {"width": 171}, r"width and height must be even"),
        ("probe", {"extensions": ["mp4"]}, r"must be lower case and start with a dot"),
        ("flow", {"method": "pwc"}, r"flow\.method = 'pwc': Input should be 'tvl1', 'tvl1_fast', 'dis'"),
        ("flow", {"tvl1": {"median_filtering": 4}}, r"flow\.tvl1\.median_filtering = 4: Value error, must be odd"),
        ("flow", {"pairs_per_task": 100}, r"pairs_per_task \(100\) must be a multiple of shard_frames \(256\)"),
        ("flow", {"raft_small": {"device": "tpu"}}, r"flow\.raft_small\.device = 'tpu'"),
    ],
)
def test_bad_values_name_key_value_and_rule(tmp_path, section, values, expected):
    with pytest.raises(ParamsError, match=expected):
        load_params(write(tmp_path, {section: values}))


def test_error_names_the_file(tmp_path):
    path = write(tmp_path, {"probe": {"min_frames": 0}})
    with pytest.raises(ParamsError, match=str(path)):
        load_params(path)
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "missing.yaml")


def test_fps_as_fraction():
    assert DecodeParams(fps=29.97).fps_fraction() == __import__("fractions").Fraction(2997, 100)
    assert DecodeParams().fps_fraction() is None


def test_every_stage_command_takes_a_params_file_and_reports_bad_params(tmp_path):
    bad = write(tmp_path, {"decode": {"short_side": 0}})
    runner = CliRunner()
    for command in ("make-demo", "probe", "decode"):
        result = runner.invoke(cli.app, [command, "--params", str(bad)])
        assert result.exit_code == 2, (command, result.output)
        assert "decode.short_side = 0" in result.output


def test_flow_sections():
    from schemas.params import FlowParams

    params = FlowParams.model_validate({"tvl1": {"lambda": 0.2}, "tvl1_fast": {"warps": 4}})
    assert params.tvl1.lambda_ == 0.2
    # Keys left out of tvl1_fast come from the speed preset, not from OpenCV's defaults.
    assert (params.tvl1_fast.nscales, params.tvl1_fast.warps, params.tvl1_fast.warm_start) == (3, 4, True)
    assert FlowParams().tvl1.model_dump(by_alias=True)["lambda"] == 0.15


@pytest.mark.parametrize("options", [
    {"s3": {"key": "AKIAEXAMPLE", "secret": "hunter2-secret"}},
    {"s3": {"endpoint_url": "http://minio:9000", "client_kwargs": {"aws_secret_access_key": "hunter2-secret"}}},
    {"gcs": {"token": "hunter2-secret"}},
    {"az": {"account_key": "hunter2-secret"}},
])  # fmt: skip
def test_credentials_in_storage_options_are_refused_without_being_shown(tmp_path, options):
    """dvc.lock records params: a credential there would be committed. The error names the key only."""
    with pytest.raises(ParamsError, match=r"data\.storage_options.*credentials do not go in params") as err:
        load_params(write(tmp_path, {"data": {"storage_options": options}}))
    assert "hunter2" not in str(err.value) and "AKIAEXAMPLE" not in str(err.value)


def test_storage_options_become_fsspecs_defaults_here_and_in_the_processes_started_from_here(monkeypatch):
    import subprocess
    import sys

    import fsspec

    from pipeline.storage import fsconfig

    monkeypatch.setattr(fsspec.config, "conf", {})
    monkeypatch.setattr(fsconfig, "_applied", {})
    monkeypatch.delenv("FSSPEC_MEMORY", raising=False)
    fsconfig.configure({"memory": {"skip_instance_cache": True}})
    assert fsspec.config.conf["memory"] == {"skip_instance_cache": True} == fsconfig.configured()["memory"]
    child = subprocess.run([sys.executable, "-c", "import fsspec; print(fsspec.config.conf.get('memory'))"], capture_output=True,
                           text=True, check=True)  # fmt: skip
    assert child.stdout.strip() == "{'skip_instance_cache': True}"
