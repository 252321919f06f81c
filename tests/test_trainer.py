"""The trainer on the fixture: the loss goes down, a killed run resumes into the same steps,
checkpoints load with weights_only, the exported encoder loads into torchvision, and DDP on two CPU
processes trains in step."""

import csv
import json
import subprocess
import sys

import pytest
import torch
import yaml
from torchvision.models.video import r3d_18

from conftest import REPO
from pipeline.trainer import CHECKPOINT, amp_dtype, lr_factor, make_deterministic, train
from schemas.params import DatasetParams, Params, SampleParams, TrainParams
from stages import sample as sample_stage

TINY = TrainParams(encoder="compact", width=8, queue_size=32, batch_size=4, flow_width_ratio=0.5, flow_blocks=(1, 1, 1, 1),
                   local_dim=16, epochs=2, lr=0.05, warmup_epochs=0.5, num_workers=0, checkpoint_every=1000, key_momentum=0.99,
                   head_bn=True)  # fmt: skip  (the demo's recipe)
SMALL_CROPS = DatasetParams(crop_size=32, view2_window=16, color_jitter_p=0, grayscale_p=0, blur_p=0, epoch="per_clip")


@pytest.fixture(scope="module")
def index(fixture_flowed, tmp_path_factory):
    out = tmp_path_factory.mktemp("index")
    sample_stage.run(SampleParams(), fixture_flowed / "flow", fixture_flowed / "store.zarr", out, scheduler="sync")
    return out / "clips.parquet"


def run(index, fixture_flowed, out, params=TINY, method="mscl", **kwargs):
    return train(params, SMALL_CROPS, method=method, index=index, store=fixture_flowed / "store.zarr", flow_method="dis", out=out,
                 progress=False, **kwargs)  # fmt: skip


def losses(out):
    with open(out / "losses.csv") as handle:
        return [{k: v for k, v in row.items()} for row in csv.DictReader(handle)]


def test_lr_warms_up_then_anneals_to_zero():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1) and lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100) == pytest.approx(1.0) and lr_factor(100, 10, 100) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(55, 10, 100) == pytest.approx(0.5)


def test_training_lowers_the_loss_and_writes_its_outputs(index, fixture_flowed, tmp_path):
    params = TINY.model_copy(update={"epochs": 8, "queue_size": 8})
    metrics = run(index, fixture_flowed, tmp_path, params)
    assert metrics["steps"] == 8 * 6  # 25 selected clips in whole batches of 4
    rows = losses(tmp_path)
    by_epoch = [sum(float(r["loss"]) for r in rows if int(r["epoch"]) == e) / 6 for e in range(8)]
    # From epoch 1 on, the queues hold real keys (in epoch 0 they start as random vectors: easy negatives).
    assert sum(by_epoch[-3:]) / 3 < 0.95 * by_epoch[1], by_epoch
    assert len(rows) == 48 and {"rgb", "flow", "flow_rot", "cross", "cross_rot", "lmcl"} <= set(rows[0])
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert not (tmp_path / CHECKPOINT).exists()  # a finished run leaves no checkpoint to resume
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert saved["config"]["method"] == "mscl" and "rgb_queue" in saved["state_dict"]


def test_a_killed_run_resumes_into_the_same_steps(index, fixture_flowed, tmp_path, capsys):
    full = tmp_path / "full"
    run(index, fixture_flowed, full)
    killed = tmp_path / "killed"
    stopped = run(index, fixture_flowed, killed, stop_after=5)  # mid-epoch 1 (6 steps per epoch)
    assert stopped == {"steps": 5, "stopped": True}
    state = torch.load(killed / CHECKPOINT, weights_only=True)
    assert state["step"] == 5 and state["dataset"][0]["position"] == 20
    assert set(state["rng"][0]) == {"torch", "shuffle"}  # on CUDA also "cuda": every generator a step draws from
    capsys.readouterr()
    run(index, fixture_flowed, killed)
    said = capsys.readouterr()
    assert "resuming" in said.err and said.out == ""  # stdout stays clean for JSON (bench/quality.py)
    a, b = losses(full), losses(killed)
    assert [row["step"] for row in a] == [row["step"] for row in b]
    for x, y in zip(a, b, strict=True):
        assert float(x["loss"]) == pytest.approx(float(y["loss"]), rel=1e-4, abs=1e-4), x["step"]
    final_a = torch.load(full / "rgb_encoder.pt", weights_only=True)
    final_b = torch.load(killed / "rgb_encoder.pt", weights_only=True)
    assert all(torch.allclose(final_a[k].float(), final_b[k].float(), atol=1e-4) for k in final_a)


def test_two_identical_runs_write_the_same_bytes(index, fixture_flowed, tmp_path):
    params = TINY.model_copy(update={"epochs": 1, "threads": 1})
    for name in ("a", "b"):
        run(index, fixture_flowed, tmp_path / name, params)
    for name in ("model.pt", "rgb_encoder.pt", "losses.csv"):  # torch.save named the records after the temporary file
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_mixed_precision_is_float16_on_cuda_and_float32_on_cpu():
    assert amp_dtype(torch.device("cuda"), True) == torch.float16 and amp_dtype(torch.device("cuda"), False) is None
    assert amp_dtype(torch.device("cpu"), True) is None  # bfloat16 there was not deterministic (bench/train_step.py)


def test_cuda_runs_use_deterministic_cudnn(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    make_deterministic(torch.device("cpu"))
    assert torch.backends.cudnn.benchmark  # nothing to do on a CPU
    make_deterministic(torch.device("cuda", 0))
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic


def test_a_checkpoint_of_other_params_is_not_resumed(index, fixture_flowed, tmp_path):
    run(index, fixture_flowed, tmp_path, stop_after=3)
    metrics = run(index, fixture_flowed, tmp_path, TINY.model_copy(update={"lr": 0.01}))
    assert metrics["steps"] == 12 and len(losses(tmp_path)) == 12  # started afresh


def test_rgb_only_baseline_and_r3d_18_export(index, fixture_flowed, tmp_path):
    params = TINY.model_copy(update={"encoder": "r3d_18", "epochs": 1, "batch_size": 13})
    metrics = run(index, fixture_flowed, tmp_path, params, method="rgb_only")
    assert metrics["steps"] == 1 and "last_epoch_rgb" in metrics and "last_epoch_flow" not in metrics
    model = r3d_18()
    model.load_state_dict(torch.load(tmp_path / "rgb_encoder.pt", weights_only=True), strict=True)
    assert model(torch.randn(1, 3, 8, 32, 32)).shape == (1, 400)


def test_ddp_on_two_cpu_processes(index, fixture_flowed, tmp_path):
    params = Params().model_dump(mode="json", by_alias=True)
    params["data"].update(sample=str(index.parent), store=str(fixture_flowed / "store.zarr"), train=str(tmp_path / "train"))
    params["flow"]["method"] = "dis"
    params["dataset"].update(SMALL_CROPS.model_dump(mode="json", include={"crop_size", "view2_window", "epoch"}))
    params["train"].update(TINY.model_dump(mode="json"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(REPO / "cli.py"), "train",
         "--params", str(tmp_path / "params.yaml")],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((tmp_path / "train" / "mscl" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["ranks_in_sync"] is True
    assert metrics["steps"] == 2 * 3  # 25 clips -> 13 per rank -> 3 whole batches of 4 per rank per epoch
    r3d = torch.load(tmp_path / "train" / "mscl" / "rgb_encoder.pt", weights_only=True)
    assert all(torch.isfinite(v.float()).all() for v in r3d.values())
