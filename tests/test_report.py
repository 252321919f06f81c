"""The report page (stages/report.py): built from the stage outputs alone, opened in headless Chromium
as a person would open it: no script or console error, the probe's failures listed with their
reasons, every image loaded; a screenshot kept. After `sample` alone it says what has not run; at
1,000 videos it stays under 10 MB; it names its inputs, and dvc.yaml depends on exactly those."""

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from pipeline.report.browser import find_chromium, open_page
from pipeline.storage.tables import read_table, write_table
from schemas.params import Params, ProbeParams
from schemas.tables import FAILURES
from stages import probe as probe_stage
from stages import report as report_stage
from stages.common import Summary, record_run

CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH, and the test set-up could not install it "
                                    "(tools/install_chromium.sh: needs apt-get and root)")  # fmt: skip


def _bench():
    spec = importlib.util.spec_from_file_location("bench_report", REPO / "bench" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def outputs(demo_sampled, bad_videos, tmp_path_factory):
    """The small demo through sample (real stage outputs), the probe's failures on every kind of bad
    video added to its manifest, and two trainings' outputs and the metrics (synthetic, in the
    trainer's and evaluate's formats)."""
    root = tmp_path_factory.mktemp("report_inputs")
    for name in ("manifest", "decode", "flow", "sample"):
        shutil.copytree(demo_sampled / name, root / name)
    probe_stage.run(ProbeParams(), bad_videos, root / "bad_manifest", scheduler="sync")
    bad = read_table(root / "bad_manifest" / "failures.parquet").to_pylist()
    write_table(root / "manifest" / "failures.parquet", read_table(root / "manifest" / "failures.parquet").to_pylist() + bad, FAILURES)
    _bench()._trainings(root / "train", root / "evaluate", __import__("numpy").random.default_rng(0))
    data = {name: str(root / name) for name in ("manifest", "decode", "flow", "sample", "train", "evaluate", "runs")}
    params = Params.model_validate({"data": {**data, "store": str(demo_sampled / "store.zarr"), "videos": str(demo_sampled / "demo/videos")},
                                    "flow": {"method": "dis"}})  # fmt: skip
    return root, params, bad


@pytest.fixture(scope="module")
def report(outputs):
    root, params, _ = outputs
    ran = Summary("extract-flow (dis)")
    ran.add("computed", 12)
    record_run(ran, params.data.runs)  # as the CLI does when a command ends (into MSCL_RUNS in the tests)
    summary = report_stage.run(params, root / "report")
    return root / "report", summary


def test_the_page_names_each_input_it_read_and_dvc_yaml_depends_on_exactly_those(report, outputs):
    root, params, _ = outputs
    page = (report[0] / "index.html").read_text()
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["report"]
    values = {f"${{data.{key}}}": value for key, value in params.data.model_dump().items() if isinstance(value, str)}
    deps = set()
    for dep in stage["deps"]:
        for variable, value in values.items():
            dep = dep.replace(variable, value)
        deps.add(dep)
    read = {str(path) for path in report_stage.Inputs(params).paths.values()}
    assert read <= deps  # every input the page may read re-runs it when it changes
    for path in read:
        assert path in page  # and the page names it


@needs_chromium
def test_the_page_opens_in_chromium_without_errors_lists_the_failures_and_loads_every_image(report, outputs, tmp_path_factory):
    root, params, bad = outputs
    artifacts = Path(os.environ.get("MSCL_TEST_ARTIFACTS", tmp_path_factory.getbasetemp() / "artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    view = open_page(report[0] / "index.html", screenshot=artifacts / "report.png", chromium=CHROMIUM)
    assert view.script_errors == [] and view.console_errors == []
    assert view.images_total >= 2 * params.report.extremes and view.images_failed == []
    text = view.text()
    assert len(bad) >= 6  # empty, truncated, random bytes, audio only, one frame, a symlink to itself
    for row in bad:  # the probe's failures, each with its reason, in the table as the page drew it
        assert row["relpath"] in text and row["reason"] in text
    assert "Evaluation" in text and "mscl - rgb_only" in text
    assert "extract-flow (dis)" in text and '{"computed": 12}' in text  # the stage's run record
    assert (artifacts / "report.png").stat().st_size > 50_000
    print(f"screenshot: {artifacts / 'report.png'}")


@needs_chromium
def test_after_sample_alone_the_page_says_what_has_not_run(outputs, tmp_path):
    root, params, _ = outputs
    early = params.model_copy(update={"data": params.data.model_copy(update={"train": str(tmp_path / "none"), "evaluate": str(tmp_path / "none")})})
    report_stage.run(early, tmp_path / "report")
    view = open_page(tmp_path / "report" / "index.html", chromium=CHROMIUM)
    assert view.script_errors == [] and view.console_errors == [] and view.images_failed == []
    assert "mscl: not trained yet" in view.text() and "The evaluate stage has not run yet" in view.text()


def test_a_report_of_1000_videos_weighs_under_10_mb(tmp_path):
    params = _bench().synthetic_outputs(tmp_path, 1000)
    summary = report_stage.run(params, tmp_path / "report")
    weight = sum(p.stat().st_size for p in (tmp_path / "report").rglob("*") if p.is_file())
    assert weight < 10_000_000 and summary.counts["strips"] == 2 * params.report.extremes
    page = (tmp_path / "report" / "index.html").read_text()
    spec = json.loads(page.split('id="motion"><script type="application/json">')[1].split("</script>")[0])
    assert len(spec["rows"]) == 950 and spec["page_rows"] == params.report.page_rows  # every video, paged in the page


@pytest.mark.parametrize("count", [0, 1, 2, 6, 30])
def test_score_curves_show_the_most_and_least_selective_videos_then_some_at_random(count):
    import pandas as pd

    rate = pd.Series({f"v{k:02d}": k / 20 for k in range(20)})
    chosen = report_stage._curve_videos(rate, count, seed=0)
    assert len(chosen) == len(set(chosen)) == min(count, 20)
    if count >= 2:
        assert chosen[0] == "v19" and "v00" in chosen  # the most selective first, the least among them
