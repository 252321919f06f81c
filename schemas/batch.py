"""What the training data looks like on its way: RAW, what the loader's workers send (one dict per
batch, `pipeline.data.dataset.collate_raw`), and SAMPLE, the training batch that
`pipeline.data.batch_augment.augment_batch` makes of it on the training device.

Shapes are per sample; a batch adds a leading B. V = 2 views, T = clip length (sample.clip_len),
H x W = the stored frame (in a batch, the largest of its videos: smaller ones are zero-padded),
S = dataset.crop_size. A worker sends RGB uint8 and flow float16 at the stored resolution with the
draws of their augmentation: about a third of the bytes of the float16 crops at 112 px it used to
send, and none of the work.
"""

from __future__ import annotations

VIEWS = 2

# key: (dtype, shape, meaning)
RAW = {
    "rgb": ("uint8", "(V, T, H, W, 3)", "each view's clip as stored: frames start + j*stride, j < T"),
    "flow": ("float16", "(V, T, H, W, 2)", "each view's flows as stored, in pixels: flow[:, j] moves frame j to the next frame; absent with with_flow=False"),
    "size": ("int64", "(2,)", "the stored frame's height and width (the rest of H x W is padding)"),
    "crop": ("int64", "(V, 4)", "each view's crop box in stored pixels: top, left, height, width"),
    "flip": ("bool", "(V,)", "whether each view is flipped horizontally"),
    "jitter": ("bool", "(V,)", "whether each view's colour is jittered (dataset.color_jitter_p)"),
    "jitter_order": ("int64", "(V, 4)", "the order of ColorJitter's ops: 0 brightness, 1 contrast, 2 saturation, 3 hue"),
    "jitter_factor": ("float32", "(V, 4)", "each op's factor; neutral (1, 1, 1, 0) for an op dataset.color_jitter switches off or a view not jittered"),
    "grayscale": ("bool", "(V,)", "whether each view is turned grayscale (dataset.grayscale_p)"),
    "blur_sigma": ("float32", "(V,)", "each view's Gaussian blur sigma, 0 for none (dataset.blur_p)"),
    "rotation": ("int64", "()", "FRA: index k of the angle (0.2 + 0.2k) * pi; absent when dataset.rotation is off or without flow"),
    "angle": ("float32", "()", "FRA rotation, radians: (0.2 + 0.2k) * pi, one per sample"),
    "start": ("int64", "(V,)", "first frame of each view's clip in the stored video"),
    "video_id": ("str", "()", "the video's id (a list of str in a batch)"),
    "item": ("int64", "()", "the epoch's item: a video (dataset.epoch: per_video, in ClipIndex.videos) or view 1's clip (per_clip, a row of the ClipIndex)"),
    "position": ("int64", "()", "place of the sample in this rank's epoch; the loader's resume point counts these"),
    "padding": ("bool", "()", "a repeat that pads this rank to the common epoch length (drop_last: false)"),
    "epoch": ("int64", "()", "the epoch the sample belongs to (a batch only)"),
}

SAMPLE = {
    "rgb": ("uint8", "(V, 3, T, S, S)", "RGB clip of each view, channels first"),
    "flow": ("float32", "(V, 2, T, S, S)", "flow of each view, aligned with its RGB: flow[:, j] moves frame j to the next frame; absent with with_flow=False"),
    "flow_rot": ("float32", "(V, 2, T, S, S)", "the same flow with every vector rotated by `angle` (FRA); absent when dataset.rotation is off or without flow"),
    "angle": ("float32", "()", "FRA rotation, radians: (0.2 + 0.2k) * pi, one per sample"),
    "start": ("int64", "(V,)", "first frame of each view's clip in the stored video"),
    "crop": ("int64", "(V, 4)", "each view's crop box in stored pixels: top, left, height, width"),
    "flip": ("bool", "(V,)", "whether each view was flipped horizontally"),
    "video_id": ("str", "()", "the video's id (a list of str in a batch)"),
    "item": ("int64", "()", "the epoch's item: a video (dataset.epoch: per_video, in ClipIndex.videos) or view 1's clip (per_clip, a row of the ClipIndex)"),
    "position": ("int64", "()", "place of the sample in this rank's epoch; the loader's resume point counts these"),
    "padding": ("bool", "()", "a repeat that pads this rank to the common epoch length (drop_last: false)"),
}
