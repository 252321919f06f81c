"""Frame codecs and fixed-point flow in the Zarr store, and reads that fail loudly on damaged data."""

import re
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import zarr

from conftest import FIXTURES, tree_bytes
from pipeline.data.synth import demo_scene, render_frames
from pipeline.storage import arrays, codecs, store
from pipeline.storage.tables import read_table
from schemas import store as layout
from schemas.params import DecodeParams, FlowParams, SampleParams
from stages import decode as decode_stage
from stages import flow as flow_stage
from stages import sample as sample_stage
from stages.common import fingerprint


def demo_frames(count: int = 12) -> np.ndarray:
    """Demo-like frames: a textured object moving over a textured background."""
    truth = demo_scene("rotate", 3, width=80, height=64, frames=count, fps=25, camera_motion=True)
    return np.stack(list(render_frames(truth)))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse))


def write(root, name, frames, **kw):
    height, width = frames.shape[1:3]
    kw = {"chunk_frames": 4, "shard_frames": 8, **kw}
    store.write_frames(root, name, [frames], height=height, width=width, attrs={}, **kw)
    return store.open_frames(root, name)


@pytest.mark.parametrize("codec", ["jpeg", "jpegxl", "avif", "webp"])
def test_image_codecs_store_frames_close_to_the_original(tmp_path, codec):
    frames = demo_frames()
    array = write(tmp_path, "v", frames, codec=codec, quality=90)
    # One frame per chunk (chunk_frames is zstd's): a strided clip decodes only its own frames.
    assert array.chunks == (1, 64, 80, 3) and array.shards == (8, 64, 80, 3)
    back = array[:]
    assert back.dtype == np.uint8 and back.shape == frames.shape
    assert psnr(back, frames) > 30
    assert not np.array_equal(back, frames)  # lossy: what is measured is how close


def test_a_plain_zarr_reader_decodes_jpeg_frames_through_the_entry_point(tmp_path):
    frames = demo_frames()
    write(tmp_path, "v", frames, codec="jpeg", quality=95)
    script = (
        "import sys, zarr\n"
        "assert 'pipeline.storage.codecs' not in sys.modules\n"
        f"x = zarr.open_array({str(tmp_path / 'frames' / 'v')!r}, mode='r')[:]\n"
        "print(x.dtype, x.shape, 'pipeline.storage.codecs' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd="/", capture_output=True, text=True, check=True).stdout
    assert out.split() == ["uint8", "(12,", "64,", "80,", "3)", "True"]


@pytest.mark.parametrize("height", [64, 61])
def test_frames_sharing_a_jpeg_chunk_decode_exactly_as_each_frame_alone(tmp_path, height):
    """JPEG strips (stores written before one frame per chunk): a chunk of k frames is one 4:4:4
    JPEG of them stacked, each padded to whole 8-row blocks, so no frame's pixels depend on its
    neighbours', whatever the height, in full and partial chunks; zarr and the pipeline's direct
    reader read them alike, and a frame of a strip is the frame the pipeline now writes alone."""
    imagecodecs = pytest.importorskip("imagecodecs")
    frames = np.ascontiguousarray(demo_frames(10)[:, :height])
    strips = zarr.create_array(store=str(tmp_path / "frames" / "v"), shape=frames.shape, dtype="uint8", chunks=(4, height, 80, 3),
                               serializer=codecs.ImageCodec(format="jpeg", level=90, subsampling="444"), zarr_format=3)  # fmt: skip
    strips[:] = frames  # the last chunk holds 2 frames
    alone = [imagecodecs.jpeg8_decode(imagecodecs.jpeg8_encode(frame, level=90, subsampling="444")) for frame in frames]
    assert np.array_equal(strips[:], np.stack(alone))
    assert np.array_equal(strips[5], alone[5]) and np.array_equal(strips[8:10], np.stack(alone[8:10]))
    singles = write(tmp_path, "w", frames, codec="jpeg", quality=90)
    assert singles.chunks[0] == 1 and np.array_equal(singles[:], np.stack(alone))
    config = store.array_meta(tmp_path, layout.FRAMES_GROUP, "w")["codecs"][0]["configuration"]["codecs"][0]
    assert config == {"name": "mscl.image", "configuration": {"format": "jpeg", "level": 90, "subsampling": "444"}}


def test_jpeg_stores_written_before_multi_frame_chunks_still_read(tmp_path):
    """One 4:2:0 frame per chunk, and no subsampling in the codec's configuration: as issue 12's first stores."""
    imagecodecs = pytest.importorskip("imagecodecs")
    frames = demo_frames(6)
    old = zarr.create_array(store=str(tmp_path / "frames" / "v"), shape=frames.shape, dtype="uint8", chunks=(1, 64, 80, 3),
                            serializer=codecs.ImageCodec(format="jpeg", level=95), zarr_format=3)  # fmt: skip
    old[:] = frames
    config = store.array_meta(tmp_path, layout.FRAMES_GROUP, "v")["codecs"][0]["configuration"]
    assert config == {"format": "jpeg", "level": 95}
    alone = [imagecodecs.jpeg8_decode(imagecodecs.jpeg8_encode(frame, level=95)) for frame in frames]
    assert np.array_equal(zarr.open_array(str(tmp_path / "frames" / "v"), mode="r")[:], np.stack(alone))


def test_the_image_codec_refuses_frames_that_would_depend_on_each_other(tmp_path):
    def create(chunks, codec):
        zarr.create_array(store=str(tmp_path / "a"), shape=(4, *chunks[1:]), dtype="uint8", chunks=chunks, serializer=codec,
                          zarr_format=3, overwrite=True)  # fmt: skip
    for codec in (codecs.ImageCodec(format="jpeg", level=90), codecs.ImageCodec(format="jpeg", level=90, subsampling="420"),
                  codecs.ImageCodec(format="webp", level=90)):  # fmt: skip
        with pytest.raises(ValueError, match="one frame per chunk"):  # chroma filters and other formats reach across rows
            create((2, 8, 8, 3), codec)
    create((2, 8, 8, 3), codecs.ImageCodec(format="jpeg", level=90, subsampling="444"))
    with pytest.raises(ValueError, match="taller than JPEG's 65500 rows"):
        create((4, 20000, 8, 3), codecs.ImageCodec(format="jpeg", level=90, subsampling="444"))
    with pytest.raises(ValueError, match="expected one of"):
        codecs.ImageCodec(format="gif")
    with pytest.raises(ValueError, match="JPEG only"):
        codecs.ImageCodec(format="webp", subsampling="444")


def write_fixed_flow(root, name, flow, precision=1 / 32):
    path = store.create_partial(root, "flow/x", name, shape=flow.shape, dtype=layout.FLOW_FIXED_DTYPE, chunks=(4, *flow.shape[1:]),
                                shards=(8, *flow.shape[1:]), axes=layout.FLOW_AXES, codec_chain=codecs.flow_codecs(precision))  # fmt: skip
    store.open_partial(path)[:] = codecs.to_fixed(flow, precision)
    store.publish(root, "flow/x", name, path, layout.fixed_point_attrs(precision))


def test_fixed_point_flow_reads_as_float16_within_half_its_precision(tmp_path):
    rng = np.random.default_rng(0)
    flow = (rng.normal(size=(10, 24, 32, 2)) * 6).astype(np.float16)
    write_fixed_flow(tmp_path, "v", flow)
    array = store.open_finished(tmp_path, "flow/x", "v", "flow")
    back = array[:]
    assert back.dtype == array.dtype == np.float16
    error = np.abs(back.astype(np.float32) - flow.astype(np.float32))
    assert error.max() <= 1 / 64 and error.max() > 0
    assert np.asarray(array).dtype == np.float16 and array[3, 0, 0].tolist() == back[3, 0, 0].tolist()
    meta = store.array_meta(tmp_path, "flow/x", "v")
    assert meta["data_type"] == "int16" and meta["attributes"] == {"scale_factor": 1 / 32, "units": "px", "num_frames": 10}
    inner = meta["codecs"][0]["configuration"]["codecs"]
    assert [codec["name"] for codec in inner] == ["bytes", "blosc", "crc32c"]  # all in the Zarr v3 specification
    assert inner[1]["configuration"]["shuffle"] == "bitshuffle"


@pytest.mark.parametrize("precision", [1 / 32, 1 / 1024, 1 / 10])
def test_fixed_point_reads_every_int16_as_numpy_would_round_it(precision):
    steps = np.arange(-32768, 32768, dtype=np.int16)
    expected = (steps.astype(np.float32) * np.float32(precision)).astype(np.float16)
    assert np.array_equal(codecs.from_fixed(steps, precision), expected)  # torch's cast, the same rounding


def test_fixed_point_keeps_int16_range():
    assert codecs.to_fixed(np.array([5000.0, -5000.0, 0.015625, 0.046875]), 1 / 32).tolist() == [32767, -32767, 0, 2]


def test_the_store_opens_in_xarray_without_a_warning_and_with_flow_in_pixels(tmp_path):
    import xarray as xr
    rng = np.random.default_rng(1)
    flows = {}
    for name in ("a", "b"):
        write(tmp_path, name, demo_frames(8), codec="jpeg")
        flows[name] = (rng.normal(size=(7, 64, 80, 2)) * 3).astype(np.float16)
        write_fixed_flow(tmp_path, name, flows[name])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frames = xr.open_zarr(tmp_path, group="frames", consolidated=False)
        flow = xr.open_zarr(tmp_path, group="flow/x", consolidated=False)
        assert frames["a"].dims == ("t", "y", "x", "c") and frames["a"].dtype == np.uint8
        assert np.array_equal(frames["b"].values, store.open_frames(tmp_path, "b")[:])
        pixels = flow["a"].values
    assert np.abs(pixels - flows["a"].astype(np.float32)).max() <= 1 / 64
    assert np.array_equal(pixels.astype(np.float16), store.open_finished(tmp_path, "flow/x", "a", "flow")[:])


def test_precision_is_read_as_a_fraction():
    assert FlowParams(precision="1/32").precision == 1 / 32
    with pytest.raises(ValueError, match="fraction such as 1/32"):
        FlowParams(precision="fine")
    assert SampleParams(flow_grid="1/32").flow_grid == 1 / 32


def damage(path, how):
    data = path.read_bytes()
    if how == "flip":
        path.write_bytes(data[: len(data) // 3] + bytes([data[len(data) // 3] ^ 0xFF]) + data[len(data) // 3 + 1 :])
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.unlink()


@pytest.mark.parametrize("codec", ["zstd", "jpeg"])
@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_damaged_shard_is_an_error_naming_video_array_and_chunk(tmp_path, codec, how):
    write(tmp_path, "v", demo_frames(16), codec=codec)
    damage(tmp_path / "frames" / "v" / "c" / "1" / "0" / "0" / "0", how)
    array = store.open_frames(tmp_path, "v")
    assert array[:8].shape == (8, 64, 80, 3)  # the first shard is intact
    with pytest.raises(IndexError):
        array[16]  # a selection out of bounds stays an IndexError
    with pytest.raises(store.CorruptChunkError, match=r"video 'v', array frames/v, frames? \d+(-\d+)?, chunk \(\d+, 0, 0, 0\)") as err:
        array[6:14]
    chunk = int(str(err.value).split("chunk (")[1].split(",")[0])
    assert 8 <= chunk * array.chunks[0] < 14  # in the damaged shard, and in the selection


def test_a_missing_shard_file_is_an_error_not_zeros(tmp_path):
    write(tmp_path, "v", demo_frames(16))
    damage(tmp_path / "frames" / "v" / "c" / "1" / "0" / "0" / "0", "delete")
    with pytest.raises(store.CorruptChunkError, match=r"video 'v', array frames/v, frames 8-15: shard file c/1/0/0/0 is missing"):
        store.open_frames(tmp_path, "v")


def test_work_in_progress_lives_beside_the_store_and_old_leftovers_inside_it_are_cleared(tmp_path):
    root = tmp_path / "store.zarr"
    legacy = root / ".partial" / "flow" / "tvl1" / "v.0123"
    legacy.mkdir(parents=True)
    store.ensure_group(root, "flow/tvl1")
    store.clear_partial(root, "flow/tvl1")
    assert not (root / ".partial").exists()
    write(root, "v", demo_frames(4))
    assert (tmp_path / "store.zarr.partial" / "frames").is_dir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # today's complaint: ".partial is not recognized as a component"
        names = sorted(name for name, _ in zarr.open_group(str(root), mode="r").members(max_depth=None))
    assert names == ["flow", "flow/tvl1", "frames", "frames/v"]


def test_lossless_stores_keep_their_fingerprints():
    # The decode fingerprint of a zstd store is what it was before the codec keys existed, so an
    # upgrade re-decodes nothing (values computed by the code before them).
    assert fingerprint("0" * 64, DecodeParams().pixel_params(), 1) == "8a531be743d132f5"
    assert fingerprint("0" * 64, DecodeParams(short_side=112, chunk_frames=4).pixel_params(), 1) == "a697fadceefde049"
    assert DecodeParams(codec="jpeg").pixel_params() != DecodeParams(codec="jpeg", quality=80).pixel_params()
    assert flow_stage.flow_fingerprint("f", FlowParams()) != flow_stage.flow_fingerprint("f", FlowParams(precision=1 / 32))


def test_flow_quarantines_a_video_whose_frames_are_damaged_and_finishes_the_rest(fixture_flowed, tmp_path):
    shutil.copytree(fixture_flowed / "store.zarr" / "frames", tmp_path / "store.zarr" / "frames")
    shutil.copy(fixture_flowed / "store.zarr" / "zarr.json", tmp_path / "store.zarr" / "zarr.json")
    rows = read_table(fixture_flowed / "decode" / "decoded.parquet").to_pylist()
    victim = rows[0]["video_id"]
    shard = next((tmp_path / "store.zarr" / "frames" / victim / "c").rglob("*"))
    while shard.is_dir():
        shard = next(shard.iterdir())
    damage(shard, "flip")
    summary = flow_stage.run(FlowParams(method="dis", precision=1 / 32), fixture_flowed / "decode", tmp_path / "store.zarr",
                             tmp_path / "flow", scheduler="sync")  # fmt: skip
    assert summary.counts["computed"] == len(rows) - 1 and summary.counts["failed"] == 1
    failure = read_table(tmp_path / "flow" / "failures.parquet").to_pylist()[0]
    assert failure["video_id"] == victim and failure["reason"] == "bad_frames"
    assert re.search(rf"array frames/{re.escape(victim)}, frames \d+-\d+, chunk \(\d+, 0, 0, 0\): does not decode", failure["detail"])
    flow = store.open_flow(tmp_path / "store.zarr", "dis", rows[1]["video_id"])[:]
    assert flow.dtype == np.float16 and np.abs(flow).max() > 1


def test_decode_with_jpeg_rewrites_only_on_a_codec_change(fixture_flowed, tmp_path):
    manifest = fixture_flowed / "manifest"
    jpeg = DecodeParams(codec="jpeg", quality=90)
    first = decode_stage.run(jpeg, manifest, FIXTURES, tmp_path / "store.zarr", tmp_path / "decode", scheduler="sync")
    again = decode_stage.run(jpeg, manifest, FIXTURES, tmp_path / "store.zarr", tmp_path / "decode", scheduler="sync")
    assert again.counts.get("skipped") == first.counts["decoded"] and "decoded" not in again.counts
    rows = read_table(tmp_path / "decode" / "decoded.parquet").to_pylist()
    lossless = store.open_frames(fixture_flowed / "store.zarr", rows[0]["video_id"])[:]
    lossy = store.open_frames(tmp_path / "store.zarr", rows[0]["video_id"])[:]
    assert lossy.shape == lossless.shape and psnr(lossy, lossless) > 30
    changed = decode_stage.run(DecodeParams(codec="jpeg", quality=80), manifest, FIXTURES, tmp_path / "store.zarr",
                               tmp_path / "decode", scheduler="sync")  # fmt: skip
    assert changed.counts["decoded"] == first.counts["decoded"]


def test_a_precision_change_re_encodes_stored_flow_instead_of_computing_it(fixture_flowed, tmp_path):
    """Switching an existing float16 store to fixed point costs no flow computation, and gives the
    very bytes a fresh run with the precision would."""
    for root in ("recoded", "fresh"):
        shutil.copytree(fixture_flowed / "store.zarr" / "frames", tmp_path / root / "store.zarr" / "frames")
        shutil.copy(fixture_flowed / "store.zarr" / "zarr.json", tmp_path / root / "store.zarr" / "zarr.json")
    run = lambda root, params: flow_stage.run(params, fixture_flowed / "decode", tmp_path / root / "store.zarr",  # noqa: E731
                                              tmp_path / root / "flow", scheduler="sync")  # fmt: skip
    fixed = FlowParams(method="dis", precision="1/32")
    computed = run("recoded", FlowParams(method="dis")).counts["computed"]
    recoded = run("recoded", fixed)
    assert "computed" not in recoded.counts and recoded.counts["re-encoded"] == computed
    run("fresh", fixed)
    assert tree_bytes(tmp_path / "recoded" / "store.zarr" / "flow") == tree_bytes(tmp_path / "fresh" / "store.zarr" / "flow")
    assert (tmp_path / "recoded" / "flow" / "stats.parquet").read_bytes() == (tmp_path / "fresh" / "flow" / "stats.parquet").read_bytes()
    assert run("recoded", fixed).counts["skipped"] == computed


def test_flow_of_lossy_frames_is_computed_from_the_source_and_survives_a_codec_change(fixture_flowed, tmp_path):
    """With JPEG frames, flow decodes the source again: the same bytes as the flow of lossless frames,
    with the same fingerprint, so switching frames to JPEG does not recompute the flow."""
    root = tmp_path / "store.zarr"
    shutil.copytree(fixture_flowed / "store.zarr", root)  # lossless frames and their DIS flow
    shutil.copytree(fixture_flowed / "flow", tmp_path / "flow")
    decoded = decode_stage.run(DecodeParams(codec="jpeg"), fixture_flowed / "manifest", FIXTURES, root, tmp_path / "decode", scheduler="sync")
    assert decoded.counts["decoded"] == 5 and "skipped" not in decoded.counts
    summary = flow_stage.run(FlowParams(method="dis"), tmp_path / "decode", root, tmp_path / "flow", scheduler="sync",
                             videos_root=FIXTURES)  # fmt: skip
    flowed = len(read_table(fixture_flowed / "flow" / "videos.parquet"))
    assert summary.counts["skipped"] == flowed and "computed" not in summary.counts
    fresh = tmp_path / "fresh.zarr"
    shutil.copytree(root / "frames", fresh / "frames")
    shutil.copy(root / "zarr.json", fresh / "zarr.json")
    computed = flow_stage.run(FlowParams(method="dis"), tmp_path / "decode", fresh, tmp_path / "fresh_flow", scheduler="sync",
                              videos_root=FIXTURES)  # fmt: skip
    assert computed.counts["computed"] == flowed
    assert tree_bytes(fresh / "flow") == tree_bytes(fixture_flowed / "store.zarr" / "flow")
    without = flow_stage.run(FlowParams(method="dis"), tmp_path / "decode", fresh, tmp_path / "fresh_flow", scheduler="sync")
    assert without.counts["computed"] == flowed and "stored lossy" in without.text()  # from the JPEG frames: other flow


def test_a_long_video_decoded_again_is_decoded_once_and_gives_the_flow_of_stored_frames(fixture_flowed, tmp_path, monkeypatch):
    """Runs of `pairs_per_task` pairs, the estimator fresh on each: from lossy frames, one pass of the
    decoder per video gives the bytes (and stats) that tasks of stored lossless frames give."""
    params = FlowParams(method="dis", pairs_per_task=8, chunk_frames=4, shard_frames=8)
    lossless = tmp_path / "lossless.zarr"
    shutil.copytree(fixture_flowed / "store.zarr" / "frames", lossless / "frames")
    shutil.copy(fixture_flowed / "store.zarr" / "zarr.json", lossless / "zarr.json")
    reference = flow_stage.run(params, fixture_flowed / "decode", lossless, tmp_path / "reference", scheduler="sync")
    jpeg = tmp_path / "jpeg.zarr"
    decode_stage.run(DecodeParams(codec="jpeg"), fixture_flowed / "manifest", FIXTURES, jpeg, tmp_path / "decode", scheduler="sync")
    passes = []
    real = flow_stage.iter_frame_blocks
    monkeypatch.setattr(flow_stage, "iter_frame_blocks", lambda path, *a, **kw: passes.append(path) or real(path, *a, **kw))
    summary = flow_stage.run(params, tmp_path / "decode", jpeg, tmp_path / "flow", scheduler="sync", videos_root=FIXTURES)
    assert summary.counts["computed"] == reference.counts["computed"] == len(passes) == len(set(passes))
    lengths = [row["num_frames"] for row in read_table(tmp_path / "decode" / "decoded.parquet").to_pylist()]
    assert max(lengths) > 3 * params.pairs_per_task  # several runs per video
    assert tree_bytes(jpeg / "flow") == tree_bytes(lossless / "flow")
    assert (tmp_path / "flow" / "stats.parquet").read_bytes() == (tmp_path / "reference" / "stats.parquet").read_bytes()


def test_scores_on_the_flow_grid_are_the_same_from_float16_and_fixed_point_flow(fixture_flowed, tmp_path):
    group = layout.flow_group("dis")
    fixed = tmp_path / "fixed.zarr"
    shutil.copytree(fixture_flowed / "store.zarr" / group, fixed / group)
    for row in read_table(fixture_flowed / "flow" / "videos.parquet").to_pylist():
        arrays.recode_flow(fixed, "dis", row["video_id"], 1 / 32, store.array_attrs(fixed, group, row["video_id"]))
    tables = {}
    for name, path, grid in (("float16", fixture_flowed / "store.zarr", "1/32"), ("fixed", fixed, "1/32"), ("raw", fixture_flowed / "store.zarr", None)):
        sample_stage.run(SampleParams(flow_grid=grid), fixture_flowed / "flow", path, tmp_path / name, scheduler="sync")
        tables[name] = (tmp_path / name / "frames.parquet").read_bytes(), (tmp_path / name / "clips.parquet").read_bytes()
    assert tables["float16"] == tables["fixed"]
    assert tables["raw"][0] != tables["float16"][0]  # the grid does round the scored flow


@pytest.mark.parametrize("layout_name", ["jpeg", "jpeg_strips", "zstd"])
def test_the_direct_reader_takes_the_frames_zarr_reads(tmp_path, monkeypatch, layout_name):
    """StoredArray.take reads the shard files itself (ChunkReader): for each layout the pipeline
    writes, or wrote before (JPEG strips of 4 frames), any frames in any order, repeats and the
    partial last chunk included, are what zarr reads."""
    frames = demo_frames(13)
    if layout_name == "jpeg_strips":
        monkeypatch.setattr(layout, "frames_chunks", lambda height, width, chunk_frames, codec: (4, height, width, 3))
    codec = "zstd" if layout_name == "zstd" else "jpeg"
    array = write(tmp_path, "v", frames, codec=codec, quality=90)
    assert array.chunks[0] == (1 if layout_name == "jpeg" else 4) and store.ChunkReader.of(array.array) is not None
    wanted = np.array([12, 0, 5, 5, 11, 3, 8])
    assert np.array_equal(array.take(wanted), array.array[:][wanted])
    array._reader = None  # a layout only zarr reads: the same frames through it
    assert np.array_equal(array.take(wanted), array.array[:][wanted]) and array.take([]).shape == (0, 64, 80, 3)
