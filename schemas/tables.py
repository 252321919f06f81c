"""Columns of every Parquet table the pipeline writes, declared once.

Stages build rows as plain dicts and hand them to `pipeline.storage.tables.write_table` with one of these
schemas, which rejects a missing or extra column instead of writing a table that drifts.
"""

from __future__ import annotations

import pyarrow as pa

# Bump when a table's meaning changes, so stale outputs are recognised.
TABLES_VERSION = 2

# data/manifest/videos.parquet: one row per usable video (probe stage).
VIDEOS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),  # stable id, safe as a path component
        pa.field("relpath", pa.string(), nullable=False),  # POSIX path relative to the videos root
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("container", pa.string(), nullable=False),  # FFmpeg demuxer names, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
        pa.field("codec", pa.string(), nullable=False),  # e.g. "h264", "mpeg4", "vp9"
        pa.field("width", pa.int32(), nullable=False),  # coded size, before rotation
        pa.field("height", pa.int32(), nullable=False),
        pa.field("display_width", pa.int32(), nullable=False),  # after rotation, with square pixels
        pa.field("display_height", pa.int32(), nullable=False),
        pa.field("sar_num", pa.int32(), nullable=False),  # sample (pixel) aspect ratio sar_num:sar_den
        pa.field("sar_den", pa.int32(), nullable=False),
        pa.field("pix_fmt", pa.string(), nullable=False),
        pa.field("fps_num", pa.int64(), nullable=False),  # nominal frame rate fps_num / fps_den
        pa.field("fps_den", pa.int64(), nullable=False),
        pa.field("fps", pa.float64(), nullable=False),  # the same rate as a float, for convenience
        pa.field("num_frames", pa.int64(), nullable=False),  # exact count of decodable frames
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("rotation", pa.int16(), nullable=False),  # degrees, counter-clockwise, one of 0/90/180/270
        pa.field("is_vfr", pa.bool_(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # "ok" or "degraded" (decodes, with errors)
        pa.field("warnings", pa.string(), nullable=False),  # "" when none; FFmpeg's complaints otherwise
    ]
)

VIDEO_STATUSES = ("ok", "degraded")

# <stage out>/failures.parquet: videos a stage could not use, and why (same columns for every stage).
FAILURES = pa.schema(
    [
        pa.field("stage", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("relpath", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # short category, see FAILURE_REASONS
        pa.field("detail", pa.string(), nullable=False),  # what went wrong and what to do, for a person
    ]
)

FAILURE_REASONS = (
    "empty_file",
    "unreadable",
    "not_a_video",
    "no_video_stream",
    "too_few_frames",
    "decode_error",
    "timeout",
    "internal_error",
    "uniform_frames",
    "bad_frames",
    "shorter_than_clip",
    "bad_flow",
    "too_large",  # frames or images larger than the memory budget (decode.memory_mb) or the absolute image cap allow
    "bad_name",  # a name tables cannot hold (not valid UTF-8)
)

# data/decode/decoded.parquet: one row per frame array in the store (decode stage).
DECODED = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("relpath", pa.string(), nullable=False),
        pa.field("array", pa.string(), nullable=False),  # path of the array inside the store
        pa.field("num_frames", pa.int64(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("fps_num", pa.int64(), nullable=False),  # frame rate of the stored frames
        pa.field("fps_den", pa.int64(), nullable=False),
        pa.field("source_frame_step", pa.float64(), nullable=False),  # source frames per stored frame
        pa.field("scale", pa.float64(), nullable=False),  # stored size / source display size
    ]
)

# <data.decode>/arrays.parquet and <data.flow>/arrays.parquet: the store's arrays a stage wrote, one
# row each with what its content depends on. DVC tracks these listings, never the store itself (that
# would put a second copy of it in .dvc/cache, and hash every shard file): a stage downstream re-runs
# when an array it reads changed.
STORE_ARRAYS = pa.schema(
    [
        pa.field("array", pa.string(), nullable=False),  # path inside the store: frames/<id>, flow/<method>/<id>
        pa.field("fingerprint", pa.string(), nullable=False),  # of its inputs and params (the array's own attribute)
        pa.field("num_frames", pa.int64(), nullable=False),  # its first axis: frames, or frame pairs
    ]
)

# data/flow/stats.parquet: one row per frame pair of every video (flow stage); enough to screen and
# re-tune clip sampling without reading the flow again.
FLOW_STATS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("frame", pa.int32(), nullable=False),  # pair index i: flow from frame i to i+1
        pa.field("mean_mag", pa.float32(), nullable=False),  # pixels/frame at the stored resolution
        pa.field("p50_mag", pa.float32(), nullable=False),
        pa.field("p90_mag", pa.float32(), nullable=False),
        pa.field("p99_mag", pa.float32(), nullable=False),
        pa.field("max_mag", pa.float32(), nullable=False),
        pa.field("moving_frac", pa.float32(), nullable=False),  # share of pixels above flow.moving_threshold
        pa.field("mean_u", pa.float32(), nullable=False),  # mean motion: camera pans show here
        pa.field("mean_v", pa.float32(), nullable=False),
        pa.field("motion_edge_mean", pa.float32(), nullable=False),  # mean Sobel magnitude of (u, v): MDS's M_i
    ]
)

# data/flow/videos.parquet: one row per flow array (flow stage).
FLOWED = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("relpath", pa.string(), nullable=False),
        pa.field("array", pa.string(), nullable=False),  # path inside the store
        pa.field("method", pa.string(), nullable=False),
        pa.field("num_pairs", pa.int64(), nullable=False),
        pa.field("fingerprint", pa.string(), nullable=False),
    ]
)

# data/sample/frames.parquet: per-frame motion scores (sample stage), every score at once so that
# switching score or threshold re-runs in seconds from this table.
FRAME_SCORES = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("frame", pa.int32(), nullable=False),  # flow frame i (frame i -> i+1)
        pa.field("mds", pa.float32(), nullable=False),  # the authors' s_i: change of attention-weighted colour-coded flow
        pa.field("motion_map_diff", pa.float32(), nullable=False),  # the same differential on the motion map alone
        pa.field("attention_diff", pa.float32(), nullable=False),  # ... on the attention map alone
        pa.field("flow_magnitude", pa.float32(), nullable=False),  # mean flow magnitude, pixels/frame
        pa.field("motion_map_mean", pa.float32(), nullable=False),  # mean of M_i (Sobel of u, v)
        pa.field("attention_mean", pa.float32(), nullable=False),  # mean of A_i (in [0, 1])
    ]
)

# data/sample/clips.parquet: the clip index, every candidate start of every video (sample stage).
# Candidates are the complete clips' starts, or with sample.convention: authors every start.
CLIP_INDEX = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("start", pa.int32(), nullable=False),  # uses frames and flows start + j*stride, j < clip_len
        pa.field("clip_len", pa.int16(), nullable=False),
        pa.field("stride", pa.int16(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),  # mean of the clip's per-frame scores
        pa.field("rank", pa.int32(), nullable=False),  # 1 = highest score in its video
        pa.field("quantile", pa.float32(), nullable=False),  # share of the video's candidates scoring lower
        pa.field("selected", pa.bool_(), nullable=False),  # kept by Motion Differential Sampling
        pa.field("complete", pa.bool_(), nullable=False),  # the whole clip exists (training uses only these);
        # false only for the tail starts that sample.convention: authors ranks too
    ]
)

# Labels as evaluation reads them (pipeline/data/splits.py), from a labels table or a dataset's split lists;
# a labels table at data.labels needs relpath and label, and may add group and split.
LABELS = pa.schema(
    [
        pa.field("relpath", pa.string(), nullable=False),  # relative to data.videos
        pa.field("label", pa.string(), nullable=False),
        pa.field("group", pa.string(), nullable=True),  # videos cut from one source (never split); null: from the name
        pa.field("split", pa.string(), nullable=True),  # "train" or "test" (official splits); null: split by hash
    ]
)
LABEL_SPLITS = ("train", "test")

# data/demo/labels.parquet: the synthetic demo dataset's classes (make_demo stage).
DEMO_LABELS = pa.schema(
    [
        pa.field("relpath", pa.string(), nullable=False),  # relative to the demo videos root
        pa.field("label", pa.string(), nullable=False),
        pa.field("label_index", pa.int32(), nullable=False),
        pa.field("camera_motion", pa.bool_(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("truth", pa.string(), nullable=False),  # ground-truth motion file, relative to the demo root
    ]
)
