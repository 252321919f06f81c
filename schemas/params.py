"""Typed schema of `params.yaml`: one model per section, validated before any stage runs.

Every section forbids unknown keys, so a typo is an error naming the key instead of a silently
ignored setting. `load_section` turns pydantic's errors into one message a person can act on.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.errors import UserError
from schemas.store import FRAME_CODECS, STRIP_SUBSAMPLING


# Option names of fsspec file systems that hold credentials (s3fs, gcsfs, adlfs, sshfs, ...), refused in params.
SECRET_OPTIONS = frozenset({"key", "secret", "token", "password", "passwd", "session_token", "security_token", "credentials",
                            "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "account_key", "sas_token",
                            "client_secret", "connection_string"})  # fmt: skip


class Section(BaseModel):
    """Base of every params section: strict keys, immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(Section):
    """Shared locations. `videos` is the one value a user changes to use their own videos."""

    videos: str = "data/demo/videos"
    demo: str = "data/demo"
    manifest: str = "data/manifest"
    store: str = "data/store.zarr"
    decode: str = "data/decode"
    flow: str = "data/flow"
    sample: str = "data/sample"
    train: str = "data/train"
    evaluate: str = "data/evaluate"
    report: str = Field("data/report", description="the report page: index.html and its images")
    runs: str = Field("data/runs", description="when each command last ran and how long it took (one JSON per stage, "
                      "shown by the report; not a DVC output)")
    labels: str = Field("data/demo/labels.parquet", description="class of each video: a table (relpath, label), or UCF101's "
                        "or HMDB51's split folder (pipeline/data/splits.py): what evaluation scores")
    storage_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="fsspec options by protocol for the locations above that are URLs, e.g. "
        "{s3: {endpoint_url: 'http://minio:9000'}}; never credentials (dvc.lock records params): those come from the "
        "environment, a profile or fsspec's configuration")

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        def secrets(options: Any, where: str) -> list[str]:
            if not isinstance(options, dict):
                return []
            found = []
            for key, inner in options.items():
                name = str(key).lower()
                if name in SECRET_OPTIONS or name.endswith(("_secret", "secret_key", "_password", "_token", "access_key")):
                    found.append(f"{where}.{key}")
                found += secrets(inner, f"{where}.{key}")
            return found

        if found := secrets(value, "data.storage_options"):
            raise ValueError(f"{', '.join(found)}: credentials do not go in params (dvc.lock records every param); put them "
                             "in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...), a profile, or fsspec's "
                             "configuration")  # fmt: skip
        return value


# The object motions the demo can make (pipeline/data/synth.py). Under a horizontal flip each class maps
# onto itself, except the pairs in FLIP_PARTNERS: a dataset holding both of a pair can only be told
# apart with dataset.flip: 0.
DEMO_CLASSES = ("slide_horizontal", "slide_vertical", "rotate", "zoom_in", "zoom_out", "oscillate")
MOTION_CLASSES = (*DEMO_CLASSES, "slide_diagonal", "orbit", "bounce", "pulse", "swing", "still",
                  "slide_left", "slide_right", "slide_up", "slide_down", "rotate_cw", "rotate_ccw")  # fmt: skip
FLIP_PARTNERS = {"slide_left": "slide_right", "slide_right": "slide_left", "rotate_cw": "rotate_ccw", "rotate_ccw": "rotate_cw"}
TEXTURES = ("blobs", "gratings")


class MakeDemoParams(Section):
    """Synthetic labelled demo dataset (see pipeline/data/synth.py). Besides the seed, the knobs change
    what a training recipe could overfit to, for held-out variants (bench/variants/)."""

    seed: int = 0
    classes: list[Literal[MOTION_CLASSES]] = Field(default_factory=lambda: list(DEMO_CLASSES))  # type: ignore[valid-type]
    videos_per_class: int = Field(8, ge=1, le=10_000)
    frames: int = Field(48, ge=2, le=10_000)
    width: int = Field(170, ge=16, le=4096)
    height: int = Field(128, ge=16, le=4096)
    fps: int = Field(25, ge=1, le=240)
    camera_motion_fraction: float = Field(0.5, ge=0.0, le=1.0)
    camera_speed: tuple[float, float] = Field((0.5, 1.5), description="range of a camera pan's speed, px/frame")
    texture: Literal[TEXTURES] = Field("blobs", description="texture family of background and objects")  # type: ignore[valid-type]
    object_size: tuple[float, float] = Field((0.2, 0.28), description="range of an object's radius, share of the frame height")
    speed: float = Field(1.0, gt=0, le=10, description="factor on every class motion's speed")
    objects: int = Field(1, ge=1, le=8, description="objects per video, each moving as its class says")
    crf: int = Field(12, ge=0, le=51)

    @field_validator("camera_speed", "object_size")
    @classmethod
    def _range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] <= value[1]:
            raise ValueError(f"must be [low, high] with 0 <= low <= high, got {list(value)}")
        return value

    def flip_exchanged(self) -> list[tuple[str, str]]:
        """Pairs of these classes that a horizontal flip turns into each other."""
        return sorted({tuple(sorted((c, FLIP_PARTNERS[c]))) for c in self.classes if FLIP_PARTNERS.get(c) in self.classes})

    @field_validator("classes")
    @classmethod
    def _non_empty_unique(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(f"at least one class is needed; allowed: {', '.join(MOTION_CLASSES)}")
        if len(set(value)) != len(value):
            raise ValueError("classes must not repeat")
        return value

    @model_validator(mode="after")
    def _even_size(self) -> "MakeDemoParams":
        # H.264 in yuv420p needs even dimensions; odd ones would be silently cropped by the encoder.
        if self.width % 2 or self.height % 2:
            raise ValueError(f"width and height must be even for H.264 (got {self.width}x{self.height})")
        return self


DEFAULT_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ogv", ".3gp")


class ProbeParams(Section):
    """Scanning the videos root and validating each video."""

    extensions: list[str] = Field(default_factory=lambda: list(DEFAULT_EXTENSIONS))
    min_frames: int = Field(2, ge=1, description="fewer decodable frames than this is a failure (flow needs 2)")
    follow_symlinks: bool = True
    timeout_s: float = Field(600.0, gt=0, description="per-video limit for FFmpeg")

    @field_validator("extensions")
    @classmethod
    def _dotted_lowercase(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one extension is needed, e.g. ['.mp4']")
        bad = [ext for ext in value if not ext.startswith(".") or ext != ext.lower()]
        if bad:
            raise ValueError(f"extensions must be lower case and start with a dot, e.g. '.mp4'; got {bad}")
        return value


def pixels_fraction(value: object) -> object:
    """Pixels written as a fraction ("1/32" reads better in params.yaml than 0.03125); both are accepted."""
    if isinstance(value, str):
        try:
            return float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"{value!r}: expected pixels as a number or a fraction such as 1/32") from None
    return value


class DecodeParams(Section):
    """Decoding to frame arrays. Stored resolution and frame rate are decided here."""

    short_side: int | None = Field(128, ge=8, le=4096, description="null keeps the source resolution")
    fps: float | None = Field(None, gt=0, le=240, description="resample to this frame rate; null keeps the source")
    frame_stride: int = Field(1, ge=1, le=1000, description="keep every n-th decoded frame")
    max_frames: int | None = Field(None, ge=1, description="stop after this many stored frames")
    chunk_frames: int = Field(8, ge=1, le=1024, description="frames per chunk with zstd; the image codecs store one per chunk")
    shard_frames: int = Field(256, ge=1, le=65_536)
    timeout_s: float = Field(3600.0, gt=0)
    codec: Literal[FRAME_CODECS] = Field(  # type: ignore[valid-type]
        "zstd", description="zstd: lossless; jpeg, jpegxl, avif, webp: one still image per frame (bench/storage.py)"
    )
    quality: int = Field(95, ge=1, le=100, description="quality of a lossy codec, 1-100 (imagecodecs' level)")
    memory_mb: int = Field(1024, ge=16, le=1 << 20, description="MiB one decode or import worker may hold of a video's frames "
                           "(FFmpeg's output read ahead, the shard being written, one source image): the blocks are sized from "
                           "it, and a video whose frames cannot fit is refused (too_large) saying what to set. One worker per "
                           "core: 16 cores x 1024 fit a 24 GiB machine. Not part of any fingerprint (it changes no pixel)")

    @model_validator(mode="after")
    def _consistent(self) -> "DecodeParams":
        if self.fps is not None and self.frame_stride != 1:
            raise ValueError("set either fps or frame_stride, not both (fps resamples in time, frame_stride subsamples)")
        if self.shard_frames % self.chunk_frames:
            raise ValueError(
                f"shard_frames ({self.shard_frames}) must be a multiple of chunk_frames ({self.chunk_frames})"
            )
        return self

    def pixel_params(self) -> dict[str, Any]:
        """The params the stored pixels depend on (a frames array's fingerprint): all of them, but
        zstd is lossless, so with it the codec keys are left out, and stores written before they
        existed keep their fingerprints."""
        dumped = self.recorded()
        if self.codec == "zstd":
            del dumped["codec"], dumped["quality"]
        if self.codec == "jpeg":  # 4:4:4 since multi-frame chunks; JPEG stores before were 4:2:0
            dumped["jpeg_subsampling"] = STRIP_SUBSAMPLING
            dumped["chunk_frames"] = 1  # one frame per chunk since strided reads decode only theirs; strips before
        return dumped

    def recorded(self) -> dict[str, Any]:
        """The params an array records as those that made it: all but the memory budget, which
        changes how frames are read, never which."""
        return self.model_dump(mode="json", exclude={"memory_mb"})

    def fps_fraction(self) -> Fraction | None:
        return None if self.fps is None else Fraction(self.fps).limit_denominator(1001)


class TVL1Params(Section):
    """OpenCV DualTVL1OpticalFlow; defaults are OpenCV's (denseflow and mmaction2 use the same)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    tau: float = Field(0.25, gt=0)
    lambda_: float = Field(0.15, gt=0, alias="lambda")
    theta: float = Field(0.3, gt=0)
    nscales: int = Field(5, ge=1, le=10)
    warps: int = Field(5, ge=1, le=20)
    epsilon: float = Field(0.01, gt=0)
    inner_iterations: int = Field(30, ge=1)
    outer_iterations: int = Field(10, ge=1)
    scale_step: float = Field(0.8, gt=0, lt=1)
    gamma: float = Field(0.0, ge=0)
    median_filtering: int = Field(5, ge=1, description="odd kernel size; 1 switches it off")
    warm_start: bool = Field(False, description="start each pair from the previous pair's flow")

    @field_validator("median_filtering")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"must be odd (a median kernel size), got {value}")
        return value


# The speed preset: warm-started from the previous pair, 3 pyramid scales and 3 warps instead of 5 and
# 5. Same accuracy as the defaults on the fixture and on 3-7 px/frame motion, 1.7x the speed
# (bench/flow.py measures both).
TVL1_FAST = dict(nscales=3, warps=3, warm_start=True)


class DISParams(Section):
    preset: Literal["ultrafast", "fast", "medium"] = "medium"
    variational_refinement_iterations: int | None = Field(None, ge=0)


class FarnebackParams(Section):
    pyr_scale: float = Field(0.5, gt=0, lt=1)
    levels: int = Field(3, ge=1)
    winsize: int = Field(15, ge=3)
    iterations: int = Field(3, ge=1)
    poly_n: int = Field(5, ge=3)
    poly_sigma: float = Field(1.2, gt=0)


class RAFTParams(Section):
    weights: str = Field("torchvision", description='checkpoint path, or "torchvision" for its cache')
    iterations: int = Field(12, ge=1, le=64)
    batch_size: int = Field(64, ge=1, description="frame pairs a forward pass (halved while the device runs out of memory)")
    device: Literal["auto", "cpu", "cuda"] = "auto"


FLOW_METHODS = ("tvl1", "tvl1_fast", "dis", "farneback", "raft_small", "raft_large")


class FlowParams(Section):
    """Optical flow: which method, its parameters, and how the work and the arrays are cut."""

    method: Literal[FLOW_METHODS] = "tvl1"  # type: ignore[valid-type]
    pairs_per_task: int = Field(256, ge=1, description="long videos are split into tasks of this many frame pairs")
    chunk_frames: int = Field(8, ge=1, le=1024)
    shard_frames: int = Field(256, ge=1, le=65_536)
    moving_threshold: float = Field(0.5, ge=0, description="pixels/frame above which a pixel counts as moving")
    precision: float | None = Field(
        None, gt=0, le=1,
        description="store flow as int16 multiples of this many pixels, e.g. 1/32 (error at most half of it); "
        "null: float16. Readers get float16 pixels either way",
    )  # fmt: skip
    tvl1: TVL1Params = TVL1Params()
    tvl1_fast: TVL1Params = TVL1Params(**TVL1_FAST)
    dis: DISParams = DISParams()
    farneback: FarnebackParams = FarnebackParams()
    raft_small: RAFTParams = RAFTParams()
    raft_large: RAFTParams = RAFTParams()

    @field_validator("tvl1_fast", mode="before")
    @classmethod
    def _fast_preset_under_user_values(cls, value: object) -> object:
        # Keys a user leaves out of `tvl1_fast` come from the preset, not from OpenCV's defaults.
        return {**TVL1_FAST, **value} if isinstance(value, dict) else value

    @field_validator("precision", mode="before")
    @classmethod
    def _pixels(cls, value: object) -> object:
        return pixels_fraction(value)

    @model_validator(mode="after")
    def _aligned(self) -> "FlowParams":
        if self.shard_frames % self.chunk_frames:
            raise ValueError(f"shard_frames ({self.shard_frames}) must be a multiple of chunk_frames ({self.chunk_frames})")
        if self.pairs_per_task % self.shard_frames:
            # Each task then writes whole shards, so parallel tasks never touch the same file.
            raise ValueError(f"pairs_per_task ({self.pairs_per_task}) must be a multiple of shard_frames ({self.shard_frames})")
        return self


SCORES = ("mds", "motion_map_diff", "attention_diff", "flow_magnitude")
MDS_CONVENTIONS = ("pipeline", "authors")


class SampleParams(Section):
    """Motion Differential Sampling: clip shape, per-frame score, and which clips to keep."""

    clip_len: int = Field(8, ge=1, le=512)
    stride: int = Field(4, ge=1, le=512)
    score: Literal[SCORES] = Field("mds", description="per-frame score; mds is the authors'")  # type: ignore[valid-type]
    threshold: Literal["median", "quantile", "absolute", "top_k"] = "median"
    quantile: float = Field(0.5, ge=0, le=1, description="with threshold: quantile")
    absolute: float = Field(0.0, ge=0, description="with threshold: absolute")
    top_k: int = Field(10, ge=1, description="with threshold: top_k")
    min_clips_per_video: int = Field(1, ge=0, description="keep at least this many (the best) per video")
    block: int = Field(28, ge=1, le=512, description="attention pooling block, pixels (the authors' 28)")
    noise_floor: float = Field(
        0.5, ge=0, description="flow shorter than this (px/frame) counts as still; 0 with convention: authors is the authors' method exactly"
    )
    flow_grid: float | None = Field(
        None, gt=0, le=1,
        description="score the flow rounded to multiples of this many px (e.g. 1/32): the selection is then the same "
        "from float16 flow as from flow stored at flow.precision = flow_grid; null: the flow as stored",
    )  # fmt: skip
    convention: Literal[MDS_CONVENTIONS] = Field(  # type: ignore[valid-type]
        "pipeline",
        description="authors: every detail of the release's generate_mcl_samples.py (scipy Sobel borders, floor-mode blocks, "
        "median over every start including the cut-short tail ones); pipeline: cv2 borders, partial border blocks kept, "
        "median over complete clips (docs/differences.md)",
    )

    @field_validator("flow_grid", mode="before")
    @classmethod
    def _pixels(cls, value: object) -> object:
        return pixels_fraction(value)


FLOW_NORMS = ("max_magnitude", "frame_max_magnitude", "fixed", "none")
FLOW_INPUTS = ("uv", "colour")
CAMERA_COMPENSATIONS = ("none", "median")


class DatasetParams(Section):
    """The streaming training dataset (pipeline/data/dataset.py): views, augmentations, flow scaling.

    Clip length and stride are `sample.clip_len` and `sample.stride`: the clip index is built for
    them, and the dataset reads them from it. Defaults are the authors' (../shared/MSCL.md, section 5)."""

    epoch: Literal["per_video", "per_clip"] = Field(
        "per_video", description="per_video: one sample per video, view 1 at a random allowed start (the authors'); "
        "per_clip: every allowed view-1 clip once (videos with more selected clips weigh more)",
    )
    sampling: bool = Field(True, description="draw view 1 from the MDS-selected starts; false: every valid start (the ablation)")
    view2_window: int = Field(64, ge=0, description="view 2 starts at start1 + U[-window, window] frames, snapped to an allowed start")
    view2_snap: Literal["nearest", "release"] = Field(
        "nearest", description="how that target snaps: nearest, the allowed start nearest to it (ties: the earlier); release, "
        "the authors' loop (loading_mscl.py:233-241): from 0, each allowed start in turn where the target is nearer to it "
        "than the choice so far is, which overshoots, breaks ties late, and gives 0 (allowed or not) for a target at or "
        "below 0 or at least twice the last allowed start",
    )
    crop_size: int = Field(112, ge=8, le=1024, description="side of the square output crop, pixels")
    crop_scale: tuple[float, float] = Field((0.2, 1.0), description="random resized crop: range of the crop's share of the frame area")
    crop_ratio: tuple[float, float] = Field((0.75, 4 / 3), description="random resized crop: range of the crop's aspect ratio (w/h)")
    flip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip (RGB and flow; u is negated)")
    color_jitter: tuple[float, float, float, float] = Field((0.4, 0.4, 0.4, 0.1), description="brightness, contrast, saturation, hue")
    color_jitter_p: float = Field(0.8, ge=0, le=1)
    grayscale_p: float = Field(0.2, ge=0, le=1)
    blur_p: float = Field(0.5, ge=0, le=1)
    blur_sigma: tuple[float, float] = Field((0.1, 2.0), description="Gaussian blur sigma range, pixels of the output crop")
    flow_norm: Literal[FLOW_NORMS] = Field(  # type: ignore[valid-type]
        "frame_max_magnitude", description="frame_max_magnitude: each stored flow frame / its largest vector, before the crop (the authors'); "
        "max_magnitude: the same on the crop; fixed: / flow_bound, clipped to [-1, 1]; none: pixels of the crop",
    )
    flow_bound: float = Field(20.0, gt=0, description="with flow_norm: fixed, pixels/frame that map to 1")
    flow_camera: Literal[CAMERA_COMPENSATIONS] = Field(  # type: ignore[valid-type]
        "none", description="none: the flow as stored (the authors'); median: each frame's median vector removed first "
        "(the camera's pan, as TSN's warped flow removes camera motion)",
    )
    flow_input: Literal[FLOW_INPUTS] = Field(  # type: ignore[valid-type]
        "colour", description="what the flow encoder reads: colour, the authors': the field drawn in the Middlebury colour "
        "wheel, through their (1,7,7) stem (bench/quality.py: MSCL R@1 56.9 +- 8.7 on the demo); uv, the 2-channel field, "
        "through a (2,7,7) stem (43.1 +- 8.7)",
    )
    rotation: bool = Field(True, description="Flow Rotation Augmentation: also yield the flow rotated by b = (0.2 + 0.2k)pi")
    cache_mb: int = Field(0, ge=0, description="per process: keep whole decoded videos in memory (LRU) up to this many MiB; 0 reads each clip from the store")
    on_damaged: Literal["skip", "fail"] = Field(
        "skip", description="a clip whose chunks do not read (damaged store): skip, it is replaced by the next readable "
        "item's sample, flagged as padding, warned about once per video and counted in metrics.json "
        "(clips_replaced_damaged); or fail the run, naming the video, the array and the chunk")
    shuffle: bool = True
    drop_last: bool = Field(False, description="false: pad ranks to equal length with repeats (flagged); true: drop the remainder")
    seed: int = 0

    @field_validator("crop_scale", "crop_ratio", "blur_sigma")
    @classmethod
    def _ordered_positive(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError(f"must be [low, high] with 0 < low <= high, got {list(value)}")
        return value

    @field_validator("crop_scale")
    @classmethod
    def _area_share(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[1] > 1:
            raise ValueError(f"the crop's share of the frame area cannot exceed 1, got {list(value)}")
        return value


class LossWeights(Section):
    """Weight of each MSCL loss (all 1 in the paper). The RGB-only baseline ignores them: its one loss
    has weight 1."""

    rgb: float = Field(1.0, ge=0)
    flow: float = Field(1.0, ge=0)
    flow_rot: float = Field(1.0, ge=0)
    cross: float = Field(1.0, ge=0)
    cross_rot: float = Field(1.0, ge=0)
    lmcl: float = Field(1.0, ge=0)


class TrainParams(Section):
    """The MSCL trainer (pipeline/trainer.py). Defaults are the paper's (../shared/MSCL.md); params.yaml
    sets a compact encoder and a short schedule so the demo trains on 2 CPU cores in minutes."""

    encoder: Literal["r3d_18", "compact"] = Field("r3d_18", description="RGB encoder: torchvision r3d_18, or the compact 3D ResNet")
    width: int = Field(16, ge=4, le=256, description="compact: channels of its first stage (r3d_18 has 64)")
    blocks: tuple[int, int, int, int] = Field((1, 1, 1, 1), description="compact: basic blocks per stage (r3d_18 has 2, 2, 2, 2)")
    flow_width_ratio: float = Field(0.25, gt=0, le=2, description="flow encoder width / RGB width (the authors' quarter)")
    flow_blocks: tuple[int, int, int, int] = (2, 2, 2, 2)
    embed_dim: int = Field(128, ge=8)
    head_bn: bool = Field(False, description="batch norm in the projection heads (SimCLR, MoCo v3); the authors' MoCo v2 heads have none")
    local_dim: int = Field(128, ge=8, description="LMCL feature channels")
    queue_size: int = Field(65536, ge=1, description="negatives per modality queue")
    temperature: float = Field(0.07, gt=0)
    lmcl_temperature: float = Field(0.07, gt=0)
    key_momentum: float = Field(0.994, ge=0, le=1, description="key encoders' momentum at step 0, cosine-annealed to 1")
    symmetric: bool = Field(False, description="each view is a query against the other's key, the losses averaged; "
                            "false: view 1 queries view 2 only (the authors')")
    bn_splits: int = Field(2, ge=1, description="shuffled-BN parts of each key batch (MoCo's shuffle BN on one device)")
    lmcl: bool = Field(True, description="Local Motion Contrastive Learning")
    fra: bool = Field(True, description="Flow Rotation Augmentation: rotated-flow losses and LMCL negatives")
    cross_modal: bool = Field(True, description="RGB<->flow clip-level losses")
    weights: LossWeights = LossWeights()
    fame: float = Field(0.0, ge=0, le=1, description="probability that a view-1 RGB clip is its moving foreground (mask from "
                        "the flow) over another clip's background (FAME; against background bias); 0: off, the authors'")
    fame_share: float = Field(0.5, gt=0, lt=1, description="FAME: share of each clip's pixels kept as its foreground (FAME's beta)")
    batch_size: int = Field(128, ge=2, description="clips per step on each rank")
    epochs: int = Field(400, ge=1)
    lr: float = Field(0.02, gt=0)
    sgd_momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(5, ge=0)
    grad_clip: float = Field(40.0, gt=0)
    amp: bool = Field(True, description="mixed precision on CUDA (float16, the losses in float32); CPU trains in float32 "
                      "(bfloat16 was not deterministic there: bench/train_step.py)")
    num_workers: int = Field(2, ge=0, description="DataLoader workers per rank")
    threads: int = Field(0, ge=0, description="torch threads per rank; 0: the cores this process may use "
                         "(os.sched_getaffinity, so taskset/cgroups apply) shared among the ranks on this machine")
    checkpoint_every: int = Field(50, ge=1, description="steps between checkpoints")
    log_every: int = Field(10, ge=1, description="steps between reading the losses back from the device (every "
                           "step is still logged: the values wait on the device); each read waits for the GPU")
    deterministic: bool = Field(True, description="CUDA: cuDNN's deterministic algorithms, so a resumed run repeats "
                                "its steps; false lets cuDNN time and pick the fastest (benchmark mode)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0


class EvaluateParams(Section):
    """Retrieval and kNN probe of the trained RGB encoders (stages/evaluate.py)."""

    clips_per_video: int = Field(8, ge=1, description="evenly spaced clips per video")
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10, 20, 50], description="R@k")
    knn: int = Field(5, ge=1, description="neighbours of the kNN probe")
    gallery_share: float = Field(0.5, gt=0, lt=1, description="share of each class's videos in the gallery (train) split, "
                                 "when data.labels gives no split")
    split: int = Field(1, ge=1, le=3, description="which of a dataset's official splits data.labels reads (UCF101, HMDB51: 1-3)")
    linear_probe: bool = Field(True, description="action recognition: a linear classifier on the frozen encoder's train-clip "
                               "features, top-1/top-5 on test videos with clip scores averaged")
    probe_l2: float = Field(1e-3, ge=0, description="linear probe: L2 penalty on the weights (features standardised)")
    probe_steps: int = Field(200, ge=1, description="linear probe: L-BFGS iterations at most")
    finetune: bool = Field(False, description="also fine-tune each encoder end to end with a linear head (for a GPU)")
    finetune_epochs: int = Field(10, ge=1)
    finetune_lr: float = Field(0.01, gt=0)
    batch_size: int = Field(32, ge=1)
    diagnostics: bool = Field(True, description="also score MSCL's flow encoder on the flow, and a non-learned motion descriptor")


class ReportParams(Section):
    """The report page (stages/report.py): how much of a large dataset it shows."""

    extremes: int = Field(3, ge=0, le=20, description="videos shown as frame-over-flow strips at each end: the most static, the most moving")
    curves: int = Field(6, ge=0, le=30, description="videos whose MDS score curve is drawn: a third the most selective, a third "
                        "the least, the rest drawn at random")
    strip_frames: int = Field(4, ge=1, le=12, description="frames (over their flow) in each strip")
    image_format: Literal["webp", "jpeg"] = "webp"
    quality: int = Field(80, ge=1, le=100, description="of the strips' images")
    page_rows: int = Field(25, ge=5, le=1000, description="rows a table shows at once (paged in the page)")
    seed: int = Field(0, description="which videos the random curves show")


class Params(Section):
    """The whole `params.yaml`."""

    data: DataParams = DataParams()
    make_demo: MakeDemoParams = MakeDemoParams()
    probe: ProbeParams = ProbeParams()
    decode: DecodeParams = DecodeParams()
    flow: FlowParams = FlowParams()
    sample: SampleParams = SampleParams()
    dataset: DatasetParams = DatasetParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    report: ReportParams = ReportParams()


class ParamsError(UserError, ValueError):
    """A params file that does not match the schema; the message names file, key, value and rule."""


S = TypeVar("S", bound=BaseModel)


def _describe(error: dict[str, Any], prefix: str) -> str:
    key = ".".join([prefix, *(str(part) for part in error["loc"])]) if prefix else ".".join(map(str, error["loc"]))
    value = error.get("input")
    if error["type"] == "extra_forbidden":
        return f"{key} = {value!r}: unknown key"
    if "storage_options" in error["loc"]:  # it may hold a credential: never shown
        return f"{key}: {error['msg']}"
    allowed = ""
    ctx = error.get("ctx") or {}
    if "expected" in ctx:
        allowed = f" (allowed: {ctx['expected']})"
    return f"{key} = {value!r}: {error['msg']}{allowed}"


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model section that holds `loc`, to suggest the right spelling."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def validate(model: type[S], raw: Any, *, source: str, prefix: str = "") -> S:
    """Validate `raw` against `model`; raise ParamsError with one line per problem."""
    try:
        return model.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            line = _describe(error, prefix)
            if error["type"] == "extra_forbidden":
                line += f"; allowed keys: {', '.join(_allowed_keys(model, tuple(error['loc'])))}"
            lines.append(line)
        raise ParamsError(f"{source}: invalid params:\n  " + "\n  ".join(lines)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a whole params file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return validate(Params, raw, source=str(path))
