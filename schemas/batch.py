"""What the training dataset yields: one dict per sample, batched by `pipeline.data.dataset.collate`.

Shapes are per sample; a batch adds a leading B. V = 2 views, T = clip length (sample.clip_len),
S = dataset.crop_size. RGB stays uint8 and flow float16 until `pipeline.data.dataset.to_device`, which
moves them and converts on the device: a quarter (RGB) and a half (flow) of float32's bytes through
the loader's queues and pinned memory.
"""

from __future__ import annotations

VIEWS = 2

# key: (dtype, shape, meaning)
SAMPLE = {
    "rgb": ("uint8", "(V, 3, T, S, S)", "RGB clip of each view, channels first"),
    "flow": ("float16", "(V, 2, T, S, S)", "flow of each view, aligned with its RGB: flow[:, j] moves frame j to the next frame; absent with with_flow=False"),
    "flow_rot": ("float16", "(V, 2, T, S, S)", "the same flow with every vector rotated by `angle` (FRA); absent when dataset.rotation is off or without flow"),
    "angle": ("float32", "()", "FRA rotation, radians: (0.2 + 0.2k) * pi, one per sample"),
    "start": ("int64", "(V,)", "first frame of each view's clip in the stored video"),
    "crop": ("int64", "(V, 4)", "each view's crop box in stored pixels: top, left, height, width"),
    "flip": ("bool", "(V,)", "whether each view was flipped horizontally"),
    "video_id": ("str", "()", "the video's id (a list of str in a batch)"),
    "item": ("int64", "()", "the epoch's item: a video (dataset.epoch: per_video, in ClipIndex.videos) or view 1's clip (per_clip, a row of the ClipIndex)"),
    "position": ("int64", "()", "place of the sample in this rank's epoch; the loader's resume point counts these"),
    "padding": ("bool", "()", "a repeat that pads this rank to the common epoch length (drop_last: false)"),
}
