"""mmaction2 interop: MDS-selected clips as RawframeDataset annotation lists (with the frames a
sampler would read there), the rawframes tree with denseflow's 8-bit flow, and r3d_18 weights under
mmaction2's ResNet3d names."""

import os
import shutil

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchvision.models.video import r3d_18

from conftest import tree_bytes
from pipeline.data.dataset import MSCLClips
from pipeline.interop import mmaction, rawframes
from pipeline.interop.mmaction import dequantise_flow, export_mmaction, quantise_flow, r3d_18_to_mmaction
from pipeline.io import scan
from pipeline.storage.store import open_flow, open_frames
from pipeline.storage.tables import read_table
from schemas.params import DatasetParams, DecodeParams, FlowParams, SampleParams
from schemas.paths import UnsafeValueError
from stages import import_rawframes as import_stage
from stages import sample as sample_stage


def mmaction_resnet3d_18_keys() -> dict[str, tuple[int, ...]]:
    """The state dict of mmaction2's ResNet3d(depth=18, with_pool1=False, with_pool2=False,
    temporal_strides=(1, 2, 2, 2), inflate=(1, 1, 1, 1)), written out from its source
    (mmaction/models/backbones/resnet3d.py at 4d6c934): every conv a ConvModule (`conv`, and `bn`,
    mmcv's name for a BatchNorm), blocks `layer{1-4}.{0,1}`, a downsample in the first block of
    layers 2-4, no fc (the classifier is the head's)."""
    keys: dict[str, tuple[int, ...]] = {}

    def conv_module(name: str, cin: int, cout: int, kernel: tuple[int, int, int]) -> None:
        keys[f"{name}.conv.weight"] = (cout, cin, *kernel)
        for part in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{name}.bn.{part}"] = (cout,)
        keys[f"{name}.bn.num_batches_tracked"] = ()

    conv_module("conv1", 3, 64, (3, 7, 7))
    cin = 64
    for layer, planes in enumerate((64, 128, 256, 512), 1):
        for block in (0, 1):
            conv_module(f"layer{layer}.{block}.conv1", cin if block == 0 else planes, planes, (3, 3, 3))
            conv_module(f"layer{layer}.{block}.conv2", planes, planes, (3, 3, 3))
            if block == 0 and layer > 1:
                conv_module(f"layer{layer}.{block}.downsample", cin, planes, (1, 1, 1))
        cin = planes
    return keys


def test_r3d_18_weights_map_onto_mmaction2_resnet3d_names_and_shapes():
    state = r3d_18(weights=None).state_dict()
    mapped = r3d_18_to_mmaction(state)
    expected = mmaction_resnet3d_18_keys()
    assert set(mapped) == {f"backbone.{key}" for key in expected}
    assert all(tuple(mapped[f"backbone.{key}"].shape) == shape for key, shape in expected.items())
    assert torch.equal(mapped["backbone.layer3.0.downsample.conv.weight"], state["layer3.0.downsample.0.weight"])
    assert set(r3d_18_to_mmaction(state, prefix="")) == set(expected)
    with pytest.raises(KeyError, match="stages.0.weight: not a key of torchvision's r3d_18"):
        r3d_18_to_mmaction({"stages.0.weight": torch.zeros(1)})


def test_flow_quantises_as_denseflow_does():
    flow = np.array([-25.0, -20.0, 0.0, 0.08, 19.9, 20.0, 31.0], np.float32)
    image = quantise_flow(flow, 20.0)
    assert image.tolist() == [0, 0, 128, 128, 254, 255, 255]  # cvRound(255 (v + 20) / 40), clipped
    step = 40.0 / 255
    inside = np.linspace(-20, 20, 1001, dtype=np.float32)
    assert np.abs(dequantise_flow(quantise_flow(inside, 20.0), 20.0) - inside).max() <= step / 2 + 1e-5


def test_export_lists_selected_clips_where_a_rawframe_sampler_reads_them(demo_sampled, tmp_path):
    out = tmp_path / "mmaction"
    counts = export_mmaction(demo_sampled / "sample", demo_sampled / "decode", demo_sampled / "demo" / "labels.parquet", 1,
                             demo_sampled / "store.zarr", out, rawframes=True, flow_method="dis")  # fmt: skip
    clips = read_table(demo_sampled / "sample" / "clips.parquet").to_pandas()
    selected = clips[clips.selected & clips.complete]
    lines = [line.split() for line in (out / "clips.txt").read_text().splitlines()]
    assert counts["clips"] == len(lines) == len(selected) and counts["videos"] == selected.video_id.nunique()
    classes = (out / "classes.txt").read_text().split()
    labels = read_table(demo_sampled / "demo" / "labels.parquet").to_pandas().set_index("relpath").label
    decoded = read_table(demo_sampled / "decode" / "decoded.parquet").to_pandas().set_index("video_id").relpath
    clip_len, stride = int(selected.clip_len.iloc[0]), int(selected.stride.iloc[0])
    video_id, offset, total, label = lines[len(lines) // 2]
    assert (video_id, int(offset)) in set(zip(selected.video_id, selected.start))
    assert int(total) == (clip_len - 1) * stride + 1 and classes[int(label)] == labels[decoded[video_id]]
    # What mmaction2's RawFrameDecode reads for this line (file = start_index 1 + offset + index) is the clip.
    folder = out / "rawframes" / video_id
    frames = open_frames(demo_sampled / "store.zarr", video_id)[:].astype(int)
    for j in range(clip_len):
        index = 1 + int(offset) + j * stride
        image = cv2.cvtColor(cv2.imread(str(folder / f"img_{index:05d}.jpg")), cv2.COLOR_BGR2RGB)
        closest = np.abs(frames - image[None].astype(int)).mean(axis=(1, 2, 3)).argmin()  # JPEG: close, not equal
        assert closest == int(offset) + j * stride
    flow = open_flow(demo_sampled / "store.zarr", "dis", video_id)
    assert len(list(folder.glob("flow_x_*.jpg"))) == len(list(folder.glob("flow_y_*.jpg"))) == len(flow)
    x = cv2.imread(str(folder / f"flow_x_{int(offset) + 1:05d}.jpg"), cv2.IMREAD_GRAYSCALE)
    assert np.abs(dequantise_flow(x, 20.0) - np.clip(flow[int(offset)][..., 0], -20, 20)).mean() < 0.5
    assert not list((out / "rawframes").glob("*.partial"))


def ucf101_lists(demo_sampled, lists):
    """UCF101's split lists (classInd.txt, trainlist01.txt, testlist01.txt) for the demo's videos."""
    labels = read_table(demo_sampled / "demo" / "labels.parquet").to_pylist()
    lists.mkdir()
    classes = sorted({row["label"] for row in labels})
    (lists / "classInd.txt").write_text("".join(f"{i} {name}\n" for i, name in enumerate(classes, 1)))
    (lists / "trainlist01.txt").write_text("".join(f"{r['relpath']} {classes.index(r['label']) + 1}\n" for r in labels[::2]))
    (lists / "testlist01.txt").write_text("".join(f"{r['relpath']}\n" for r in labels[1::2]))
    return lists


def test_export_with_an_official_split_writes_train_and_test_lists(demo_sampled, tmp_path):
    lists = ucf101_lists(demo_sampled, tmp_path / "lists")
    export_mmaction(demo_sampled / "sample", demo_sampled / "decode", lists, 1, demo_sampled / "store.zarr", tmp_path / "out")
    train = (tmp_path / "out" / "train.txt").read_text().splitlines()
    test = (tmp_path / "out" / "test.txt").read_text().splitlines()
    assert train and test and not {line.split()[0] for line in train} & {line.split()[0] for line in test}
    assert not (tmp_path / "out" / "rawframes").exists()


def exported_tree(demo_sampled, out):
    export_mmaction(demo_sampled / "sample", demo_sampled / "decode", None, 1, demo_sampled / "store.zarr", out, rawframes=True,
                    flow_method="dis")  # fmt: skip
    return out / "rawframes"


def test_import_of_an_exported_tree_gives_the_frames_and_flow_back_and_sample_runs_on_it(demo_sampled, tmp_path, monkeypatch):
    tree = exported_tree(demo_sampled, tmp_path / "export")
    store = tmp_path / "store.zarr"
    summary = import_stage.run(tree, store, tmp_path / "decode", tmp_path / "flow", DecodeParams(short_side=None), FlowParams(method="dis"),
                               bound=20.0, fps=25.0, scheduler="sync")  # fmt: skip
    assert summary.counts["videos"] == summary.counts["with flow"] == 12 and "failed" not in summary.counts
    decoded = read_table(tmp_path / "decode" / "decoded.parquet").to_pylist()
    original = read_table(demo_sampled / "decode" / "decoded.parquet").to_pandas().set_index("video_id")
    row = decoded[0]
    was = row["relpath"]  # the folder export named after the video's id; import derives a new id from it
    assert row["video_id"] == scan.video_id(was) and row["num_frames"] == original.num_frames[was]
    imported, source = open_frames(store, row["video_id"])[:], open_frames(demo_sampled / "store.zarr", was)[:]
    assert imported.shape == source.shape and np.abs(imported.astype(int) - source).mean() < 6  # one JPEG generation
    flow, truth = open_flow(store, "dis", row["video_id"]), open_flow(demo_sampled / "store.zarr", "dis", was)[:]
    attrs = flow.attrs.asdict()
    assert attrs["imported"] is True and attrs["quantisation_step_px"] == pytest.approx(40 / 255)
    error = np.abs(flow[:].astype(np.float32) - np.clip(truth, -20, 20))
    assert np.median(error) <= 40 / 255 and error.mean() < 0.3  # the 8-bit step, plus JPEG's error on the flow images
    # The stages downstream read it unchanged.
    sample_stage.run(SampleParams(), tmp_path / "flow", store, tmp_path / "sample", scheduler="sync")
    assert read_table(tmp_path / "sample" / "clips.parquet").to_pandas().selected.sum() > 0
    item = MSCLClips(tmp_path / "sample" / "clips.parquet", store, "dis", DatasetParams(crop_size=32)).sample(0)  # what train reads
    assert item["rgb"].shape[-2:] == item["flow"].shape[-2:] == (32, 32)
    # A re-run imports nothing again, and decodes no image to find that out.
    monkeypatch.setattr(rawframes, "_read_image", lambda *a, **kw: pytest.fail("a re-run decoded an image"))
    again = import_stage.run(tree, store, tmp_path / "decode", tmp_path / "flow", DecodeParams(short_side=None), FlowParams(method="dis"),
                             bound=20.0, fps=25.0, scheduler="sync")  # fmt: skip
    assert again.counts["videos"] == again.counts["unchanged"] == 12
    assert summary.counts["unchanged"] == 0


def test_import_quarantines_each_bad_folder_and_keeps_the_rest(demo_sampled, tmp_path):
    tree = exported_tree(demo_sampled, tmp_path / "export")
    folders = sorted(p for p in tree.iterdir())
    bad = {}
    (folders[0] / "flow_y_00003.jpg").unlink()  # flow_x and flow_y counts differ
    bad[folders[0].name] = ("bad_flow", "flow_x images but")
    (folders[1] / "img_00005.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # a corrupt JPEG
    bad[folders[1].name] = ("bad_frames", "img_00005.jpg: does not decode")
    for path in folders[2].glob("flow_*.jpg"):  # flow images of another size than their frames
        cv2.imwrite(str(path), cv2.resize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), (64, 48)))
    bad[folders[2].name] = ("bad_flow", "flow images are 64x48, frames 170x128")
    (folders[3] / "img_00010.jpg").unlink()  # a gap in the frames
    bad[folders[3].name] = ("bad_frames", "with gaps (missing [10])")
    summary = import_stage.run(tree, tmp_path / "store.zarr", tmp_path / "decode", tmp_path / "flow", DecodeParams(short_side=64),
                               FlowParams(method="dis"), bound=20.0, fps=25.0, scheduler="sync")  # fmt: skip
    assert summary.counts["failed"] == 4 and summary.counts["videos"] == 8
    failures = {row["relpath"]: row for row in read_table(tmp_path / "decode" / "failures.parquet").to_pylist()}
    assert set(failures) == set(bad)
    for name, (reason, detail) in bad.items():
        assert failures[name]["reason"] == reason and detail in failures[name]["detail"], failures[name]
    # decode.short_side applies: the frames and flow are resized alike, vectors scaled with them.
    row = read_table(tmp_path / "decode" / "decoded.parquet").to_pylist()[0]
    assert (row["width"], row["height"]) == (85, 64) and row["scale"] == pytest.approx(0.5)
    small = open_flow(tmp_path / "store.zarr", "dis", row["video_id"])[:].astype(np.float32)
    full = np.clip(open_flow(demo_sampled / "store.zarr", "dis", row["relpath"])[:].astype(np.float32), -20, 20)
    assert small.shape[1:3] == (64, 85) and np.abs(small).mean() == pytest.approx(np.abs(full).mean() / 2, rel=0.2)


def claiming(data: bytes, width: int, height: int) -> bytes:
    """JPEG bytes whose frame header (SOF0) claims another size; the data stays as it was."""
    patched = bytearray(data)
    sof = patched.find(b"\xff\xc0")
    patched[sof + 5 : sof + 7], patched[sof + 7 : sof + 9] = height.to_bytes(2, "big"), width.to_bytes(2, "big")
    return bytes(patched)


def test_hostile_images_and_names_cost_only_their_video_and_symlinks_follow_the_probes_rule(demo_sampled, tmp_path):
    """Before: a 60000x60000 header ended the import with cv2.error and no tables; 12000x12000 headers
    decoded as grey at 3.4 GB; a JPEG cut to a third imported without a row; flow_x and flow_y of
    two sizes raised numpy's ValueError; a name that is not UTF-8 segfaulted cv2.imread; a 3 GB sparse
    image ended it with MemoryError (the fingerprint read files whole); a symlinked folder was
    skipped without a word."""
    tree = exported_tree(demo_sampled, tmp_path / "export")
    folders = sorted(p for p in tree.iterdir())
    bad = {}
    first = folders[0] / "img_00001.jpg"
    first.write_bytes(claiming(first.read_bytes(), 60000, 60000))
    bad[folders[0].name] = ("too_large", "img_00001.jpg: its header says 3600.0 MP")
    for index in (1, 2, 3):
        image = folders[1] / f"img_{index:05d}.jpg"
        image.write_bytes(claiming(image.read_bytes(), 12000, 12000)[:1600])
    bad[folders[1].name] = ("too_large", "img_00001.jpg: its header says 12000x12000 (144.0 MP), more than the 44.7 MP")
    cut = folders[2] / "img_00003.jpg"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 3])
    bad[folders[2].name] = ("bad_frames", "img_00003.jpg: does not decode as an image (image file is truncated")
    flow_y = folders[3] / "flow_y_00002.jpg"
    cv2.imwrite(str(flow_y), cv2.resize(cv2.imread(str(flow_y), cv2.IMREAD_GRAYSCALE), (40, 30)))
    bad[folders[3].name] = ("bad_flow", "flow images are 40x30, frames 170x128 (flow_y_00002.jpg)")
    sparse = folders[4] / "img_00002.jpg"
    sparse.unlink()
    with open(sparse, "wb") as handle:
        handle.truncate(3 * 2**30)
    bad[folders[4].name] = ("too_large", "img_00002.jpg: a file of 3,072 MiB, more than an image this import reads may take (172 MiB")
    os.rename(folders[5], os.path.join(os.fsencode(tree), b"caf\xe9"))
    bad["caf\\xe9"] = ("bad_name", "the folder's name is not valid UTF-8")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(folders[6], outside / folders[6].name)
    os.symlink(outside / folders[6].name, folders[6])  # a video folder that is a symlink out of the root
    linked = folders[7] / "img_00004.jpg"
    shutil.move(linked, outside / "img_00004.jpg")
    os.symlink(outside / "img_00004.jpg", linked)  # one image that is a symlink
    run = lambda follow: import_stage.run(tree, tmp_path / f"store{follow}.zarr", tmp_path / f"decode{follow}", tmp_path / f"flow{follow}",  # noqa: E731
                                          DecodeParams(), FlowParams(method="dis"), bound=20.0, fps=25.0, follow_symlinks=follow,
                                          scheduler="sync")  # fmt: skip
    summary = run(False)
    failures = {row["relpath"]: row for row in read_table(tmp_path / "decodeFalse" / "failures.parquet").to_pylist()}
    bad[folders[7].name] = ("bad_frames", "with gaps (missing [4])")  # its symlinked image is not read
    assert set(failures) == set(bad)
    for name, (reason, detail) in bad.items():
        assert failures[name]["reason"] == reason and detail in failures[name]["detail"], failures[name]
    decoded = {row["relpath"] for row in read_table(tmp_path / "decodeFalse" / "decoded.parquet").to_pylist()}
    assert decoded == {p.name for p in folders[8:]} and summary.counts["failed"] == len(bad)
    assert f"skipped {folders[6].name}: a symlink, not followed (probe.follow_symlinks: false)" in summary.notes
    assert f"skipped {folders[7].name}/img_00004.jpg: a symlink, not followed (probe.follow_symlinks: false)" in summary.notes
    # Following symlinks (the probe's default), both linked videos are imported; the rest as before.
    followed = run(True)
    decoded = {row["relpath"] for row in read_table(tmp_path / "decodeTrue" / "decoded.parquet").to_pylist()}
    assert decoded == {p.name for p in folders[6:]} and followed.counts["failed"] == len(bad) - 1


def export(demo_sampled, out, labels=None, **options):
    return export_mmaction(demo_sampled / "sample", demo_sampled / "decode", labels, 1, demo_sampled / "store.zarr", out, **options)


def test_export_refuses_a_folder_it_did_not_write_and_never_deletes_what_it_did_not_write(demo_sampled, tmp_path):
    """Before: export overwrote a user's classes.txt and clips.txt, deleted rawframes/<id>/my_annotation.json
    and <id>.partial/important.txt, and a symlinked rawframes/<id> ended it with NotADirectoryError."""
    users = tmp_path / "mine"
    users.mkdir()
    (users / "classes.txt").write_text("my classes\n")
    before = tree_bytes(users)
    with pytest.raises(mmaction.ExportRefused, match=r"mine: is not empty and export-mmaction did not write it"):
        export(demo_sampled, users)
    assert tree_bytes(users) == before
    out = tmp_path / "out"
    export(demo_sampled, out, rawframes=True)
    video = sorted(p.name for p in (out / "rawframes").iterdir())[0]
    (out / "rawframes" / video / "my_annotation.json").write_text("{}")
    (out / "rawframes" / f"{video}.partial").mkdir()
    (out / "rawframes" / f"{video}.partial" / "important.txt").write_text("keep me")
    with pytest.raises(mmaction.ExportRefused, match=rf"{video}/my_annotation.json: export-mmaction did not write it"):
        export(demo_sampled, out, rawframes=True)
    assert (out / "rawframes" / video / "my_annotation.json").read_text() == "{}"
    (out / "rawframes" / video / "my_annotation.json").unlink()
    export(demo_sampled, out, rawframes=True)  # its own folder, its own files: replaced
    assert (out / "rawframes" / f"{video}.partial" / "important.txt").read_text() == "keep me"
    shutil.rmtree(out / "rawframes" / video)
    os.symlink(tmp_path, out / "rawframes" / video)
    with pytest.raises(mmaction.ExportRefused, match=rf"rawframes/{video}: is a symlink or a file"):
        export(demo_sampled, out, rawframes=True)
    assert (tmp_path / "mine" / "classes.txt").read_text() == "my classes\n"  # nothing followed through the link


def test_a_later_export_leaves_no_list_of_an_earlier_one_beside_its_own(demo_sampled, tmp_path):
    """Before: train.txt and test.txt of a split export stayed beside the next export's clips.txt."""
    lists = ucf101_lists(demo_sampled, tmp_path / "lists")
    out = tmp_path / "out"
    export(demo_sampled, out, lists)
    assert {p.name for p in out.iterdir()} == {"classes.txt", "train.txt", "test.txt", mmaction.EXPORT_MARKER}
    export(demo_sampled, out)
    assert {p.name for p in out.iterdir()} == {"classes.txt", "clips.txt", mmaction.EXPORT_MARKER}


def test_a_label_that_is_not_one_line_is_refused_where_it_is_read(demo_sampled, tmp_path):
    """Before: 'aaa\\nbbb' split classes.txt into three lines for two classes, and another video's
    line then named the wrong class."""
    rows = read_table(demo_sampled / "demo" / "labels.parquet").to_pylist()
    rows[3]["label"] = "aaa\nbbb"
    labels = tmp_path / "labels.parquet"
    pq.write_table(pa.Table.from_pylist(rows), labels)
    with pytest.raises(UnsafeValueError, match=r"labels.parquet, row 3: label 'aaa\\nbbb' holds a line break"):
        export(demo_sampled, tmp_path / "out", labels)
    assert not (tmp_path / "out").exists()


def test_import_to_a_store_at_a_url_writes_the_bytes_of_a_local_import(demo_sampled, tmp_path):
    import fsspec

    tree = exported_tree(demo_sampled, tmp_path / "export")
    url, memory = "memory://import-test/store.zarr", fsspec.filesystem("memory")
    for store, out in ((tmp_path / "store.zarr", tmp_path / "local"), (url, tmp_path / "remote")):
        summary = import_stage.run(tree, store, out / "decode", out / "flow", DecodeParams(short_side=None), FlowParams(method="dis"),
                                   bound=20.0, fps=25.0, scheduler="sync")  # fmt: skip
        assert summary.counts["videos"] == 12 and "failed" not in summary.counts
    try:
        local = {str(p.relative_to(tmp_path / "store.zarr")): p.read_bytes() for p in (tmp_path / "store.zarr").rglob("*") if p.is_file()}
        remote = {key.removeprefix("/import-test/store.zarr/"): memory.cat_file(key) for key in memory.find("/import-test/store.zarr")}
        local.pop("zarr.json"), remote.pop("zarr.json")  # the root: each store's own identity marker
        assert remote.keys() == local.keys() and [key for key in local if remote[key] != local[key]] == []
        for table in ("decode/arrays.parquet", "flow/arrays.parquet"):
            assert (tmp_path / "remote" / table).read_bytes() == (tmp_path / "local" / table).read_bytes()
        assert len(read_table(tmp_path / "remote" / "flow" / "arrays.parquet")) == 12
    finally:
        memory.rm("/import-test", recursive=True)
