"""bench/quality.py end to end on a tiny variant: the variant is built through the stages, both methods
train per seed, the report holds per-seed values, their mean and the paired margins, and an MSCL
ablation reuses the RGB-only runs."""

import json
import subprocess
import sys

import pytest
import yaml

from conftest import REPO

TINY_VARIANT = {
    "make_demo": {"classes": ["slide_horizontal", "rotate", "zoom_in"], "videos_per_class": 4, "frames": 24, "width": 64, "height": 48,
                  "texture": "gratings", "objects": 2, "object_size": [0.15, 0.2]},
    "flow": {"method": "dis"},
    "sample": {"clip_len": 4, "stride": 2},
    "dataset": {"crop_size": 32, "flow_camera": "median"},
    "train": {"width": 8, "flow_width_ratio": 0.5, "local_dim": 16, "queue_size": 8, "batch_size": 4, "epochs": 2, "warmup_epochs": 1,
              "num_workers": 0},
    "evaluate": {"clips_per_video": 2},
}  # fmt: skip


def quality(variant, out, *extra):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "quality.py"), "--variant", str(variant), "--seeds", "0", "1",
                           "--out", str(out), *extra], capture_output=True, text=True, cwd=REPO, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_quality_bench_on_a_tiny_variant(tmp_path):
    variant = tmp_path / "tiny.yaml"
    variant.write_text(yaml.safe_dump(TINY_VARIANT))
    out = tmp_path / "quality"
    result = quality(variant, out)
    assert result["variant"] == "tiny" and result["seeds"] == [0, 1]
    assert (out / "tiny" / "data" / "demo" / "labels.parquet").is_file()  # built through the stages
    assert (out / "tiny" / "data" / "built.json").is_file()  # and stamped: a re-run skips the stages
    block = result["video_R@1"]
    for model in ("mscl", "rgb_only", "random"):
        assert len(block[model]["per_seed"]) == 2 and block[model]["mean"] == pytest.approx(sum(block[model]["per_seed"]) / 2, abs=0.01)
    assert len(result["linear_probe_top1"]["mscl"]["per_seed"]) == 2  # the paper's second protocol, per seed too
    margins = block["mscl_minus_random"]["per_seed"]
    assert margins == pytest.approx([a - b for a, b in zip(block["mscl"]["per_seed"], block["random"]["per_seed"], strict=True)])
    assert block["mscl_minus_random"]["all_positive"] == all(m > 0 for m in margins)
    assert set(result["diagnostics"]) == {"flow_encoder", "flow_encoder_random", "motion_histogram"}
    assert result["losses"]["mscl"]["cross"]["chance"] == pytest.approx(2 * 2.19722, abs=1e-4)  # 2 log(8 + 1)
    report = out / "tiny" / "results"
    assert len(list(report.glob("*/quality.json"))) == 1 and len(list(report.glob("*/losses.png"))) == 1
    runs = sorted(p.name.split("-")[0] for p in (out / "tiny" / "train").iterdir() if p.is_dir())  # not the runs' .lock files
    assert runs == ["mscl", "mscl", "rgb_only", "rgb_only"]
    # The same command again only reads what is there; an MSCL-only ablation trains MSCL alone.
    assert quality(variant, out)["video_R@1"] == block
    ablation = quality(variant, out, "--set", "train.weights.lmcl=0.5")
    runs = sorted(p.name.split("-")[0] for p in (out / "tiny" / "train").iterdir() if p.is_dir())  # not the runs' .lock files
    assert runs == ["mscl"] * 4 + ["rgb_only"] * 2
    assert ablation["video_R@1"]["rgb_only"] == block["rgb_only"]
    # A data param in --set builds data of its own, in a folder keyed by it; the variant's stay as they were.
    stamp = (out / "tiny" / "data" / "built.json").read_bytes()
    quality(variant, out, "--set", "sample.stride=1")
    folders = sorted(p.name for p in out.iterdir())
    assert len(folders) == 2 and folders[0] == "tiny" and folders[1].startswith("tiny-")
    assert json.loads((out / folders[1] / "data" / "built.json").read_text())["sample"]["stride"] == 1
    assert (out / "tiny" / "data" / "built.json").read_bytes() == stamp
