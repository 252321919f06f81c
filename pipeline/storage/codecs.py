"""Zarr v3 codecs for the store: still-image codecs for frames (JPEG, JPEG XL, AVIF, WebP from
imagecodecs), the codec chains of frames and flow arrays, and fixed-point flow (int16 multiples of
`flow.precision` px, bitshuffled and zstd-compressed by zarr's blosc codec: only codecs of the
Zarr v3 specification, with the step stored as CF's `scale_factor` attribute).

`ImageCodec` is an ordinary zarr v3 array->bytes codec: a chunk of (k, H, W, 3) uint8 frames
becomes one image file's bytes, and the sharding codec packs many such chunks into one file. With
JPEG at 4:4:4 a chunk holds several frames, stacked top to bottom in one image (each padded to whole
8x8 blocks by repeating its last row, as libjpeg pads any edge), so every frame decodes to exactly
the pixels it would alone and a clip read costs a few chunks, not one per frame; the other formats
(and subsampled JPEG, whose chroma filters reach across rows) keep one frame per chunk. It is
registered with zarr under the name `mscl.image`, both here (importing this module) and as a
`zarr.codecs` entry point of this package, so any zarr reader in an environment where the package
is installed opens the store without importing anything of ours.

Every chunk ends in a CRC32C checksum, so a flipped or truncated byte is an error on read, never
silently wrong pixels (a JPEG decoder happily decodes many corrupt streams).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from zarr.abc.codec import ArrayBytesCodec
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec
from zarr.core.common import JSON, parse_named_configuration
from zarr.registry import register_codec

from schemas import store as layout

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

CODEC_NAME = "mscl.image"


def _imagecodecs():
    import imagecodecs  # imported on first use: only image-coded stores need it

    return imagecodecs


@dataclass(frozen=True)
class ImageCodec(ArrayBytesCodec):
    """A chunk of frames as one still image (`format`: jpeg, jpegxl, avif or webp).

    `level` is the format's quality setting as imagecodecs takes it (JPEG and WebP: 0-100; JPEG XL
    and AVIF: 0-100 as well, higher is better). `subsampling` (JPEG only) is the chroma subsampling
    written, "444" for none; None is libjpeg's default (4:2:0, as stores written before it existed).
    Lossy: a decoded frame is close to, not equal to, what was written (bench/storage.py measures
    how close). Several frames per chunk only with JPEG at 4:4:4 (`layout.STRIP_SUBSAMPLING`).
    """

    is_fixed_size = False

    format: str
    level: int
    subsampling: str | None

    def __init__(self, *, format: str = "jpeg", level: int = 95, subsampling: str | None = None) -> None:  # noqa: A002 (the config key)
        if format not in layout.IMAGE_FORMATS:
            raise ValueError(f"image codec format {format!r}: expected one of {', '.join(layout.IMAGE_FORMATS)}")
        if not 0 <= int(level) <= 100:
            raise ValueError(f"image codec level {level}: expected 0-100")
        if subsampling is not None and (format != "jpeg" or subsampling not in layout.JPEG_SUBSAMPLINGS):
            raise ValueError(f"image codec subsampling {subsampling!r}: JPEG only, one of {', '.join(layout.JPEG_SUBSAMPLINGS)}")
        object.__setattr__(self, "format", format)
        object.__setattr__(self, "level", int(level))
        object.__setattr__(self, "subsampling", subsampling)

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        _, config = parse_named_configuration(data, CODEC_NAME)
        return cls(**config)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, JSON]:
        config: dict[str, JSON] = {"format": self.format, "level": self.level}
        if self.subsampling is not None:
            config["subsampling"] = self.subsampling
        return {"name": CODEC_NAME, "configuration": config}

    @property
    def strips(self) -> bool:
        """Whether a chunk may hold several frames (stacked in one image) without one frame's
        pixels depending on another's."""
        return self.format == "jpeg" and self.subsampling == layout.STRIP_SUBSAMPLING

    def validate(self, *, shape: tuple[int, ...], dtype: Any, chunk_grid: Any) -> None:
        chunk = tuple(getattr(chunk_grid, "chunk_shape", ()))
        if np.dtype(dtype.to_native_dtype()) != np.uint8 or len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"{CODEC_NAME} stores (T, H, W, 3) uint8 frames, not {dtype} of shape {shape}")
        if chunk and chunk[0] != 1 and not self.strips:
            raise ValueError(f"{CODEC_NAME} with {self.format} (subsampling {self.subsampling}) stores one frame per chunk; "
                             f"chunks of {chunk[0]} frames were asked for (only jpeg at {layout.STRIP_SUBSAMPLING} keeps "
                             f"frames sharing an image independent)")  # fmt: skip
        if chunk and chunk[0] * _padded(chunk[1]) > layout.JPEG_MAX_SIDE:
            raise ValueError(f"{CODEC_NAME}: {chunk[0]} frames of height {chunk[1]} stack into an image taller than "
                             f"JPEG's {layout.JPEG_MAX_SIDE} rows; use fewer frames per chunk")  # fmt: skip

    def _encode_image(self, image: np.ndarray) -> bytes:
        codecs = _imagecodecs()
        if self.format == "jpeg":
            return codecs.jpeg8_encode(image, level=self.level, subsampling=self.subsampling)
        # One thread each: parallelism is across videos, and the bytes do not depend on scheduling.
        if self.format == "jpegxl":
            return codecs.jpegxl_encode(image, level=self.level, lossless=False, numthreads=1)
        if self.format == "avif":  # speed 8: 190 frames/s at 170x128, against 1.5 at libavif's default
            return codecs.avif_encode(image, level=self.level, speed=8, numthreads=1)
        return codecs.webp_encode(image, level=self.level, lossless=False, numthreads=1)

    def _decode_image(self, data: bytes) -> np.ndarray:
        codecs = _imagecodecs()
        decode = {"jpeg": codecs.jpeg8_decode, "jpegxl": codecs.jpegxl_decode, "avif": codecs.avif_decode,
                  "webp": codecs.webp_decode}[self.format]  # fmt: skip
        return decode(data)

    # As zarr's own compressors: the work runs in a thread (the image libraries release the GIL),
    # so the chunks of one read decode in parallel.
    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        stack = self.frames(self._decode_image(chunk_bytes.to_bytes()), chunk_spec.shape)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(np.ascontiguousarray(stack))

    def frames(self, image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """A chunk's decoded image as its (k, H, W, 3) frames (a view: each frame's padding rows dropped)."""
        frames, height, width, channels = shape
        padded = height if frames == 1 else _padded(height)
        if image.shape != (frames * padded, width, channels):
            raise ValueError(f"{self.format} chunk decodes to shape {image.shape}, expected {(frames * padded, width, channels)}")
        return image.reshape(frames, padded, width, channels)[:, :height]

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        frames, height, width, channels = chunk_spec.shape
        stack = chunk_array.as_numpy_array().reshape(chunk_spec.shape)
        if frames > 1 and _padded(height) != height:  # whole 8x8 blocks per frame: the rows libjpeg would repeat
            stack = np.pad(stack, ((0, 0), (0, _padded(height) - height), (0, 0), (0, 0)), mode="edge")
        image = np.ascontiguousarray(stack.reshape(-1, width, channels))
        return chunk_spec.prototype.buffer.from_bytes(self._encode_image(image))

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError(f"{CODEC_NAME} output size depends on the image")


def _padded(height: int) -> int:
    """A frame's height in a multi-frame chunk's image: whole JPEG blocks (8 rows at 4:4:4)."""
    return -(-height // 8) * 8


register_codec(CODEC_NAME, ImageCodec)


def lossless() -> dict[str, Any]:
    """`zarr.create_array` codec keywords of a lossless array: zstd, then the checksum."""
    return {"compressors": [ZstdCodec(level=layout.ZSTD_LEVEL), Crc32cCodec()]}


def frames_codecs(codec: str, quality: int) -> dict[str, Any]:
    """`zarr.create_array` keywords for a frames array stored with `decode.codec`."""
    if codec == "zstd":
        return lossless()
    subsampling = layout.STRIP_SUBSAMPLING if codec == "jpeg" else None
    return {"serializer": ImageCodec(format=codec, level=quality, subsampling=subsampling), "compressors": [Crc32cCodec()]}


def flow_codecs(precision: float | None) -> dict[str, Any]:
    """`zarr.create_array` keywords for a flow array: float16 with zstd (`precision` None), or the
    int16 multiples of `precision` that `to_fixed` makes, bitshuffled and zstd-compressed (blosc)."""
    if precision is None:
        return lossless()
    return {"compressors": [BloscCodec(cname="zstd", clevel=layout.ZSTD_LEVEL, shuffle="bitshuffle", typesize=2),
                            Crc32cCodec()]}  # fmt: skip


def to_fixed(flow: np.ndarray, precision: float) -> np.ndarray:
    """Flow in pixels as int16 multiples of `precision`: rounded (half to even) from its float16
    values, so float16 flow re-encoded gives the bytes of flow written fixed-point at once, and
    clipped to int16's range (+- 1024 px at 1/32)."""
    steps = np.rint(np.asarray(flow, np.float16).astype(np.float32) / np.float32(precision))
    return np.clip(steps, -layout.FLOW_FIXED_MAX, layout.FLOW_FIXED_MAX).astype(layout.FLOW_FIXED_DTYPE)


def stored_flow(flow: np.ndarray, precision: float | None) -> np.ndarray:
    """Flow in pixels as a flow array stores it: float16, or int16 multiples of `precision`."""
    return np.asarray(flow).astype(layout.FLOW_DTYPE) if precision is None else to_fixed(flow, precision)


def from_fixed(steps: np.ndarray, precision: float) -> np.ndarray:
    """Float16 pixels from int16 multiples of `precision` (exact below 64 px at 1/32: float16's own
    spacing above). Through torch: its float32->float16 cast is vectorised, numpy's is 4x slower."""
    steps = torch.from_numpy(np.ascontiguousarray(steps))
    if math.frexp(precision)[0] == 0.5:  # a power of two: scaling float16 by it is exact, so one cast does
        return steps.to(torch.float16).mul_(precision).numpy()
    return steps.to(torch.float32).mul_(precision).to(torch.float16).numpy()
