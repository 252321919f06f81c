"""What each kind of stored array holds, built in one place: the attributes of a frames array, of a
computed flow array and of an imported one (every key declared in schemas/store.py, checked here),
and the empty flow array a writer fills. decode, extract-flow and import-rawframes all build their
arrays through these."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.storage import codecs, store
from schemas import store as layout


def frames_attrs(*, video_id: str, relpath: str, sha256: str, fps: tuple[int, int], source_fps: tuple[int, int], source_frame_step: float,
                 source_size: tuple[int, int], decoded_size: tuple[int, int], scale: float, params: dict[str, Any], ffmpeg: str,
                 fingerprint: str) -> dict[str, Any]:  # fmt: skip
    """The attributes of a frames array (`num_frames` is added when it is published); rates as (num, den)."""
    # In this order (zarr keeps it in zarr.json): the arrays' bytes, and DVC's hashes of them, stay as they were.
    return _declared({
        "video_id": video_id, "relpath": relpath, "sha256": sha256, "fps": list(fps), "source_fps": list(source_fps), "source_frame_step": source_frame_step,
        "source_size": list(source_size), "scale": scale, "params": params, "ffmpeg": ffmpeg, "axes": list(layout.FRAMES_AXES),
        "fingerprint": fingerprint, "store_version": layout.STORE_VERSION, "decoded_size": list(decoded_size),
    }, layout.FRAMES_ATTRS)  # fmt: skip


def flow_attrs(*, video_id: str, method: str, estimator: dict[str, Any] | None, frames_fingerprint: str, fingerprint: str,
               stats: dict[str, list[float]], precision: float | None, quantisation_step: float | None = None) -> dict[str, Any]:  # fmt: skip
    """The attributes of a flow array: computed, or imported from 8-bit images (`quantisation_step`,
    px). Fixed-point flow (`precision`) carries its step as `scale_factor`."""
    attrs = {"video_id": video_id, "method": method, "estimator": estimator, "frames_fingerprint": frames_fingerprint,
             "fingerprint": fingerprint, "axes": list(layout.FLOW_AXES), "store_version": layout.STORE_VERSION, "stats": stats}  # fmt: skip
    if precision is not None:
        attrs.update(layout.fixed_point_attrs(precision))
    if quantisation_step is not None:
        attrs.update(imported=True, quantisation_step_px=quantisation_step)
    return _declared(attrs, layout.FLOW_ATTRS)


def create_flow(store_path: str | Path, method: str, video_id: str, *, pairs: int, height: int, width: int, precision: float | None,
                chunk_frames: int, shard_frames: int) -> Path | str:  # fmt: skip
    """An empty flow array (pairs, height, width, 2) under the store's partial root, stored as float16
    or, with `precision`, as int16 multiples of it; to be filled and published (store.publish)."""
    return store.create_partial(
        store_path, layout.flow_group(method), video_id, shape=(pairs, height, width, 2),
        dtype=layout.FLOW_DTYPE if precision is None else layout.FLOW_FIXED_DTYPE, chunks=(chunk_frames, height, width, 2),
        shards=(shard_frames, height, width, 2), axes=layout.FLOW_AXES, codec_chain=codecs.flow_codecs(precision),
    )  # fmt: skip


def recode_flow(store_path: str | Path, method: str, video_id: str, precision: float, attrs: dict[str, Any], *,
                lease: str | None = None) -> None:  # fmt: skip
    """Rewrite a finished float16 flow array as fixed point at `precision`, shard by shard, in its
    own chunks and shards, atomically; `attrs` (less `num_frames`) replace its attributes. The same
    bytes as writing it so at once."""
    source = store.open_flow(store_path, method, video_id)
    shard = (source.shards or source.chunks)[0]
    pairs, height, width = source.shape[:3]
    blocks = ((start, codecs.to_fixed(source[start : start + shard], precision)) for start in range(0, pairs, shard))
    if store.is_url(store_path):  # written in place there: the old array goes when the new one starts, so read it first
        blocks = iter(list(blocks))
    partial = create_flow(store_path, method, video_id, pairs=pairs, height=height, width=width, precision=precision,
                          chunk_frames=source.chunks[0], shard_frames=shard)  # fmt: skip
    try:
        target = store.open_partial(partial)
        for start, block in blocks:
            target[start : start + len(block)] = block
        kept = {key: value for key, value in attrs.items() if key != "num_frames"}
        store.publish(store_path, layout.flow_group(method), video_id, partial, {**kept, **layout.fixed_point_attrs(precision)},
                      lease=lease)  # fmt: skip
    finally:
        store.discard_partial(partial)


def _declared(attrs: dict[str, Any], declared: tuple[str, ...]) -> dict[str, Any]:
    undeclared = sorted(set(attrs) - set(declared))
    if undeclared:  # a programming error: declare the attribute in schemas/store.py first
        raise AssertionError(f"attributes {undeclared} are not declared in schemas/store.py")
    return attrs
