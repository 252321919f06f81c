"""Layout of the Zarr v3 store: which arrays exist, their dtype, shape, chunking and attributes.

    <store>/frames/<video_id>            (T, H, W, 3) uint8 RGB, the decode stage's output
    <store>/flow/<method>/<video_id>     (T-1, H, W, 2) float16 pixels, flow[i]: frame i -> i+1 (u=x, v=y);
                                         or int16 multiples of its `scale_factor` attribute (flow.precision)
    <store>.partial/<group>/<video_id>.* arrays being written, beside the store (which holds
                                         finished arrays only); renamed into place when complete

Each top-level group (`frames`, later `flow/<method>`) is one stage's DVC output and a Zarr group
of its own, so a reader can open it without the store's root.

The root group's attributes carry the store's identity (`STORE_MARKER`), written when the store is
created; each group's attributes list the arrays this store wrote there (`OWNED_ATTR`), the only
ones a stage ever deletes (pipeline/storage/ownership.py).
"""

from __future__ import annotations

STORE_VERSION = 1

# Root group attribute: {"layout": STORE_VERSION, "id": random hex, "created": ISO time}. A folder
# without it is not this pipeline's store (unless adopted, pipeline/storage/ownership.py).
STORE_MARKER = "mscl_store"
# Group attribute: sorted names of the arrays this store wrote (or is writing) in the group.
OWNED_ATTR = "owned_arrays"

FRAMES_GROUP = "frames"
PARTIAL_SUFFIX = ".partial"  # in-progress writes live in <store>.partial, never mistaken for finished arrays
LEGACY_PARTIAL_DIR = ".partial"  # where they lived before, inside the store: cleared when found

FRAMES_DTYPE = "uint8"
# decode.codec: "zstd" (lossless) or a still-image format, one frame per chunk (pipeline/storage/codecs.py).
IMAGE_FORMATS = ("jpeg", "jpegxl", "avif", "webp")
FRAME_CODECS = ("zstd", *IMAGE_FORMATS)
JPEG_SUBSAMPLINGS = ("444", "422", "420", "411", "440")  # libjpeg's chroma subsamplings
STRIP_SUBSAMPLING = "444"  # decode.codec: jpeg writes no chroma subsampling, so a chunk holds several frames
JPEG_MAX_SIDE = 65500  # rows of one JPEG image (a chunk's frames, stacked)
FRAMES_AXES = ("t", "y", "x", "c")  # RGB channels last
ZSTD_LEVEL = 3

# Attributes every frames array carries (array.attrs).
FRAMES_ATTRS = (
    "video_id",  # id of the source video
    "relpath",  # source path relative to the videos root
    "sha256",  # source content hash
    "fps",  # [num, den] of the stored frames
    "source_fps",  # [num, den] of the source
    "source_frame_step",  # source frames per stored frame
    "source_size",  # [width, height] after rotation
    "decoded_size",  # [width, height] FFmpeg decodes to before scaling (flow re-decodes lossy-stored videos)
    "scale",  # stored size / source size
    "params",  # the decode params that produced it
    "ffmpeg",  # FFmpeg version string used
    "axes",  # FRAMES_AXES
    "fingerprint",  # hash of source and params; a re-run skips arrays whose fingerprint matches
    "store_version",
    "num_frames",  # T, written last: an array carrying it is complete
)


FLOW_GROUP = "flow"  # one subgroup per method: flow/tvl1, flow/raft_small, ...
FLOW_DTYPE = "float16"  # what every reader gets, however it is stored
FLOW_FIXED_DTYPE = "int16"  # flow.precision set: round(pixels / precision) stored as this
FLOW_FIXED_MAX = 2**15 - 1  # flow is clipped to +- this many multiples of the precision (1024 px at 1/32)


def fixed_point_attrs(precision: float) -> dict[str, float | str]:
    """Attributes of a fixed-point flow array: its step in CF's terms (xarray applies it on open)."""
    return {"scale_factor": precision, "units": "px"}
FLOW_AXES = ("t", "y", "x", "uv")

# Attributes every flow array carries.
FLOW_ATTRS = (
    "video_id",
    "method",  # estimator name
    "estimator",  # its parameters and library versions
    "frames_fingerprint",  # fingerprint of the frames array it was computed from
    "fingerprint",  # hash of frames fingerprint, method and params
    "axes",
    "store_version",
    "stats",  # per-pair statistics {name: [value per pair]}, as in the flow stats table
    "scale_factor",  # fixed point only (flow.precision): stored int16 * scale_factor = pixels
    "units",  # fixed point only: "px"
    "imported",  # imported only (import-rawframes): true
    "quantisation_step_px",  # imported only: the step of the 8-bit images it came from, 2 x bound / 255 px
    "num_frames",  # T-1 pairs, written last
)


def flow_group(method: str) -> str:
    return f"{FLOW_GROUP}/{method}"


def frames_chunks(height: int, width: int, chunk_frames: int, codec: str = "zstd") -> tuple[int, int, int, int]:
    """Chunk = whole frames, never a partial one: `chunk_frames` of them with zstd (a clip read
    touches few chunks, and zstd finds what frames share), one per chunk with an image codec, so a
    strided clip decodes only its own frames (8 at stride 4: a fifth of the JPEG decoding of
    8-frame strips, the same pixels, about 5% more bytes; bench/loader.py). pipeline/storage/codecs.py
    still reads the JPEG strips of stores written before."""
    return (chunk_frames if codec == "zstd" else 1, height, width, 3)


def frames_shards(height: int, width: int, shard_frames: int) -> tuple[int, int, int, int]:
    """Shard = many chunks in one file, so a video is a handful of files (DVC hashes every file)."""
    return (shard_frames, height, width, 3)
