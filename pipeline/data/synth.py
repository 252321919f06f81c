"""Synthetic videos with known motion: the demo dataset, the test fixtures, and their ground truth.

A scene is a stack of textured layers (a background, optionally a foreground object with an
elliptical mask). Each layer has, per frame, a similarity transform from its texture to the screen:
the texture centre lands at (cx, cy), rotated by `angle` (radians, counter-clockwise on screen) and
scaled by `scale`. Camera motion is folded into every layer's transform. Because every motion is an
exact affine map, the ground-truth flow between two frames is known at every pixel:
flow(x) = M[t+1] M[t]^-1 x - x, using the top-most layer that covers x at frame t.

`SceneTruth` is what is written beside each video as JSON; `render_frames` and `truth_flow` rebuild
frames and dense flow from it at any resolution scale.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from schemas.params import MOTION_CLASSES

TRUTH_VERSION = 1


@dataclass(frozen=True)
class Layer:
    """One textured layer. `params[t] = (cx, cy, angle, scale)` places the texture centre on screen."""

    texture_seed: int
    texture_size: tuple[int, int]  # (height, width) of the texture
    params: list[tuple[float, float, float, float]]
    ellipse: tuple[float, float] | None = None  # object mask radii (ry, rx) in texture pixels; None = opaque
    texture: str = "blobs"  # texture family (TEXTURES)

    def affine(self, t: int) -> np.ndarray:
        """2x3 map from texture pixel coordinates (x, y) to screen coordinates at frame t."""
        cx, cy, angle, scale = self.params[t]
        # Screen y points down, so a counter-clockwise rotation on screen is -angle in matrix terms.
        cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
        linear = np.array([[cos, sin], [-sin, cos]])
        pivot = np.array([(self.texture_size[1] - 1) / 2, (self.texture_size[0] - 1) / 2])
        offset = np.array([cx, cy]) - linear @ pivot
        return np.hstack([linear, offset[:, None]])


@dataclass(frozen=True)
class Segment:
    """A shot: the layers shown from frame `start` until the next segment (a scene cut)."""

    start: int
    layers: list[Layer]


@dataclass(frozen=True)
class SceneTruth:
    width: int
    height: int
    fps: tuple[int, int]  # (num, den)
    num_frames: int
    segments: list[Segment]
    kind: str = ""  # what motion the video shows, for people
    label: str = ""  # demo class, if any
    version: int = field(default=TRUTH_VERSION)

    def segment_at(self, t: int) -> Segment:
        return [s for s in self.segments if s.start <= t][-1]

    @property
    def cuts(self) -> list[int]:
        """Frames that start a new shot: flow from frame c-1 to c is undefined."""
        return [s.start for s in self.segments[1:]]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SceneTruth":
        raw = json.loads(text)
        if raw.get("version") != TRUTH_VERSION:
            raise ValueError(f"ground truth version {raw.get('version')} is not {TRUTH_VERSION}; regenerate it")
        segments = [
            Segment(
                start=s["start"],
                layers=[
                    Layer(
                        texture_seed=layer["texture_seed"],
                        texture_size=tuple(layer["texture_size"]),
                        params=[tuple(p) for p in layer["params"]],
                        ellipse=tuple(layer["ellipse"]) if layer["ellipse"] else None,
                        texture=layer.get("texture", "blobs"),
                    )
                    for layer in s["layers"]
                ],
            )
            for s in raw["segments"]
        ]
        return cls(
            width=raw["width"], height=raw["height"], fps=tuple(raw["fps"]), num_frames=raw["num_frames"],
            segments=segments, kind=raw["kind"], label=raw["label"], version=raw["version"],
        )  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> "SceneTruth":
        return cls.from_json(Path(path).read_text())


# ---------------------------------------------------------------- textures and rendering


TEXTURES = ("blobs", "gratings")


def make_texture(seed: int, size: tuple[int, int], family: str = "blobs") -> np.ndarray:
    """A deterministic, richly textured RGB image (float32 in [0, 255]), so optical flow has structure
    everywhere. "blobs": smooth colour fields at several scales plus random discs and bars;
    "gratings": a plaid of three coloured sinusoidal gratings of random period and orientation,
    over fine colour noise."""
    if family == "gratings":
        return _gratings(seed, size)
    if family != "blobs":
        raise ValueError(f"unknown texture family {family!r}; allowed: {', '.join(TEXTURES)}")
    height, width = size
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.float32)
    for cell, weight in ((48, 0.45), (16, 0.35), (5, 0.2)):
        coarse = rng.random((max(2, height // cell + 2), max(2, width // cell + 2), 3)).astype(np.float32)
        image += weight * cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    image = (image - image.min()) / max(1e-6, float(image.max() - image.min())) * 255.0
    shapes = np.zeros_like(image)
    for _ in range(max(4, height * width // 600)):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        if rng.random() < 0.6:
            cv2.circle(shapes, (x, y), int(rng.integers(2, 9)), colour, -1, cv2.LINE_AA)
        else:
            dx, dy = int(rng.integers(-12, 13)), int(rng.integers(-12, 13))
            cv2.line(shapes, (x, y), (x + dx, y + dy), colour, int(rng.integers(1, 4)), cv2.LINE_AA)
    mask = shapes.any(axis=2, keepdims=True)
    return np.where(mask, shapes, image).astype(np.float32)


def _gratings(seed: int, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros((height, width, 3), np.float32)
    for _ in range(3):
        period, theta, phase = rng.uniform(6.0, 24.0), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + phase)
        image += wave[..., None] * rng.uniform(-1.0, 1.0, 3).astype(np.float32)
    image += 0.15 * rng.standard_normal((height, width, 3)).astype(np.float32)
    return ((image - image.min()) / max(1e-6, float(image.max() - image.min())) * 255.0).astype(np.float32)


def _ellipse_mask(size: tuple[int, int], radii: tuple[float, float]) -> np.ndarray:
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    r = np.sqrt(((yy - cy) / radii[0]) ** 2 + ((xx - cx) / radii[1]) ** 2)
    # A one-pixel soft edge keeps the encoded boundary free of ringing.
    return np.clip((1.0 - r) * min(radii) + 0.5, 0.0, 1.0).astype(np.float32)


def _screen_affine(layer: Layer, t: int, scale: float) -> np.ndarray:
    """Texture->screen affine for a screen resized by `scale` (pixel centres aligned)."""
    zoom = np.array([[scale, 0, 0.5 * scale - 0.5], [0, scale, 0.5 * scale - 0.5], [0, 0, 1]])
    return (zoom @ np.vstack([layer.affine(t), [0, 0, 1]]))[:2]


def render_frames(truth: SceneTruth, scale: float = 1.0):
    """Yield the video's frames as (H, W, 3) uint8 RGB, optionally at `scale` times the size."""
    width, height = round(truth.width * scale), round(truth.height * scale)
    textures: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    for t in range(truth.num_frames):
        frame = np.zeros((height, width, 3), np.float32)
        for layer in truth.segment_at(t).layers:
            if layer.texture_seed not in textures:
                mask = _ellipse_mask(layer.texture_size, layer.ellipse) if layer.ellipse else None
                textures[layer.texture_seed] = (make_texture(layer.texture_seed, layer.texture_size, layer.texture), mask)
            texture, mask = textures[layer.texture_seed]
            matrix = _screen_affine(layer, t, scale)
            warped = cv2.warpAffine(texture, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            if mask is None:
                frame = warped
            else:
                alpha = cv2.warpAffine(mask, matrix, (width, height), flags=cv2.INTER_LINEAR, borderValue=0.0)[..., None]
                frame = frame * (1 - alpha) + warped * alpha
        yield np.clip(np.rint(frame), 0, 255).astype(np.uint8)


def truth_flow(truth: SceneTruth, t: int, scale: float = 1.0, margin: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth flow from frame t to t+1: ((H, W, 2) float32 in pixels, (H, W) bool valid mask).

    Invalid: across a scene cut, within `margin` pixels of an object's edge (occlusion and the soft
    mask), and where the pixel moves out of the frame.
    """
    if not 0 <= t < truth.num_frames - 1:
        raise ValueError(f"flow index {t} out of range for {truth.num_frames} frames")
    width, height = round(truth.width * scale), round(truth.height * scale)
    flow = np.zeros((height, width, 2), np.float32)
    if t + 1 in truth.cuts:
        return flow, np.zeros((height, width), bool)
    valid = np.ones((height, width), bool)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    points = np.stack([xs, ys, np.ones_like(xs)], axis=-1)
    for layer in truth.segment_at(t).layers:
        now = np.vstack([_screen_affine(layer, t, scale), [0, 0, 1]])
        nxt = _screen_affine(layer, t + 1, scale)
        moved = points @ (nxt @ np.linalg.inv(now)).T
        layer_flow = (moved - points[..., :2]).astype(np.float32)
        if layer.ellipse is None:
            flow[:] = layer_flow
            continue
        # Where is the object? Its texture coordinates at screen x lie inside the ellipse.
        tex = points @ np.linalg.inv(now)[:2].T
        cy, cx = (layer.texture_size[0] - 1) / 2, (layer.texture_size[1] - 1) / 2
        ry, rx = layer.ellipse
        radius = np.sqrt(((tex[..., 1] - cy) / ry) ** 2 + ((tex[..., 0] - cx) / rx) ** 2)
        inside = radius < 1.0
        flow[inside] = layer_flow[inside]
        edge_band = (margin + 1.0) / (min(ry, rx) * layer.params[t][3] * scale)
        valid &= np.abs(radius - 1.0) > edge_band
    target_x, target_y = xs + flow[..., 0], ys + flow[..., 1]
    valid &= (target_x >= 0) & (target_x <= width - 1) & (target_y >= 0) & (target_y <= height - 1)
    return flow, valid


# ---------------------------------------------------------------- scenes with class-defining motion


@dataclass(frozen=True)
class DemoStyle:
    """What a demo variant changes besides its seed and classes (make_demo params): the texture
    family, the objects' radius as a share of the frame height, a factor on every class motion's
    speed, the camera pan's speed range in px/frame, and how many objects move (each as the class
    says, with its own texture, place and direction)."""

    texture: str = "blobs"
    object_size: tuple[float, float] = (0.2, 0.28)
    speed: float = 1.0
    camera_speed: tuple[float, float] = (0.5, 1.5)
    objects: int = 1


def _background(rng: np.random.Generator, width: int, height: int, frames: int, pan: tuple[float, float], texture: str) -> Layer:
    # Big enough that the camera never leaves the texture, even after a long pan.
    extra = int(np.ceil(max(abs(pan[0]), abs(pan[1])) * frames)) + 16
    size = (height + 2 * extra, width + 2 * extra)
    params = [(width / 2 - 0.5 + pan[0] * t, height / 2 - 0.5 + pan[1] * t, 0.0, 1.0) for t in range(frames)]
    return Layer(texture_seed=int(rng.integers(2**31)), texture_size=size, params=params, texture=texture)


def _object_params(label: str, rng: np.random.Generator, width: int, height: int, frames: int, *, speed: float = 1.0,
                   centre: tuple[float, float] = (0.5, 0.5)):  # fmt: skip
    """Per-frame (cx, cy, angle, scale) of an object whose motion defines `label`, its speed
    multiplied by `speed`, placed near `centre` (shares of width and height)."""
    t = np.arange(frames, dtype=np.float64)
    cx0 = centre[0] * width + rng.uniform(-0.08, 0.08) * width
    cy0 = centre[1] * height + rng.uniform(-0.08, 0.08) * height
    angle0 = rng.uniform(-0.3, 0.3)
    cx, cy, angle, scale = np.full(frames, cx0), np.full(frames, cy0), np.full(frames, angle0), np.ones(frames)
    direction = rng.choice([-1.0, 1.0])
    centred = t - frames / 2
    phase_of = lambda period: 2 * np.pi * t / period + rng.uniform(0, 2 * np.pi)  # noqa: E731
    if label in ("slide_horizontal", "slide_left", "slide_right"):
        sign = {"slide_left": -1.0, "slide_right": 1.0}.get(label, direction)
        cx = cx0 + sign * speed * rng.uniform(1.0, 1.8) * centred
    elif label in ("slide_vertical", "slide_up", "slide_down"):
        sign = {"slide_up": -1.0, "slide_down": 1.0}.get(label, direction)
        cy = cy0 + sign * speed * rng.uniform(0.8, 1.4) * centred
    elif label in ("rotate", "rotate_cw", "rotate_ccw"):
        # angle grows counter-clockwise on screen (see Layer.affine)
        sign = {"rotate_cw": -1.0, "rotate_ccw": 1.0}.get(label, direction)
        angle = angle0 + sign * speed * np.deg2rad(rng.uniform(3.0, 6.0)) * t
    elif label == "zoom_in":
        scale = 0.75 * np.exp(speed * np.log(rng.uniform(1.5, 1.8)) * t / max(1, frames - 1))
    elif label == "zoom_out":
        scale = 1.3 * np.exp(-speed * np.log(rng.uniform(1.5, 1.8)) * t / max(1, frames - 1))
    elif label == "oscillate":
        period = rng.uniform(12.0, 20.0)
        cx = cx0 + speed * rng.uniform(8.0, 14.0) * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    elif label == "slide_diagonal":
        heading = np.deg2rad(45.0 + 90.0 * rng.integers(4))
        velocity = speed * rng.uniform(0.8, 1.4)
        cx, cy = cx0 + velocity * np.cos(heading) * centred, cy0 + velocity * np.sin(heading) * centred
    elif label == "orbit":
        radius, phase = speed * rng.uniform(8.0, 14.0), phase_of(rng.uniform(16.0, 24.0)) * direction
        cx, cy = cx0 + radius * np.cos(phase), cy0 + radius * np.sin(phase)
    elif label == "bounce":
        cy = cy0 + speed * rng.uniform(6.0, 11.0) * np.sin(phase_of(rng.uniform(12.0, 20.0)))
    elif label == "pulse":
        scale = 1.0 + speed * rng.uniform(0.15, 0.25) * np.sin(phase_of(rng.uniform(12.0, 20.0)))
    elif label == "swing":
        angle = angle0 + speed * np.deg2rad(rng.uniform(20.0, 35.0)) * np.sin(phase_of(rng.uniform(12.0, 20.0)))
    elif label != "still":
        raise ValueError(f"unknown motion class {label!r}; allowed: {', '.join(MOTION_CLASSES)}")
    return cx, cy, angle, scale


def demo_scene(label: str, seed: int, *, width: int, height: int, frames: int, fps: int, camera_motion: bool,
               style: DemoStyle = DemoStyle()) -> SceneTruth:  # fmt: skip
    """One demo video: textured objects moving as `label` says, over a random background that the
    camera pans across when `camera_motion`. Appearance is random and independent of the label."""
    rng = np.random.default_rng(seed)
    pan = (0.0, 0.0)
    if camera_motion:
        speed, heading = rng.uniform(*style.camera_speed), rng.uniform(0, 2 * np.pi)
        pan = (speed * np.cos(heading), speed * np.sin(heading))
    layers = [_background(rng, width, height, frames, pan, style.texture)]
    for k in range(style.objects):  # spread side by side; one object sits in the middle
        centre = ((k + 0.5) / style.objects, 0.5)
        cx, cy, angle, scale = _object_params(label, rng, width, height, frames, speed=style.speed, centre=centre)
        radius_y = rng.uniform(*style.object_size) * height
        radius_x = radius_y * rng.uniform(0.8, 1.4)
        tex = (int(2 * radius_y) + 8, int(2 * radius_x) + 8)
        # The object moves with the world: the camera pan shifts it on screen as it shifts the background.
        params = [(float(cx[i] + pan[0] * i), float(cy[i] + pan[1] * i), float(angle[i]), float(scale[i])) for i in range(frames)]
        layers.append(Layer(texture_seed=int(rng.integers(2**31)), texture_size=tex, params=params, ellipse=(radius_y, radius_x),
                            texture=style.texture))  # fmt: skip
    return SceneTruth(
        width=width, height=height, fps=(fps, 1), num_frames=frames,
        segments=[Segment(0, layers)], kind=f"object {label}" + (" with camera pan" if camera_motion else ""),
        label=label,
    )  # fmt: skip


def global_motion_scene(
    seed: int, *, width: int, height: int, frames: int, fps: tuple[int, int],
    velocity: tuple[float, float] = (0.0, 0.0), rotation_deg: float = 0.0, zoom: float = 1.0, kind: str = "",
) -> SceneTruth:  # fmt: skip
    """Camera motion of the whole frame: per-frame translation (px), rotation (deg) and zoom factor."""
    rng = np.random.default_rng(seed)
    diagonal = int(np.ceil(np.hypot(width, height)))
    extra = int(np.ceil(max(map(abs, velocity)) * frames)) + 8
    size = (diagonal + 2 * extra, diagonal + 2 * extra)
    params = [
        (width / 2 - 0.5 + velocity[0] * t, height / 2 - 0.5 + velocity[1] * t, np.deg2rad(rotation_deg) * t, zoom**t)
        for t in range(frames)
    ]
    layer = Layer(texture_seed=int(rng.integers(2**31)), texture_size=size, params=[tuple(map(float, p)) for p in params])
    return SceneTruth(width=width, height=height, fps=fps, num_frames=frames, segments=[Segment(0, [layer])], kind=kind)
