"""Optical flow estimators behind one interface: frames in, flow out.

    estimator.estimate(frames)  # (T, H, W, 3) uint8 RGB -> (T-1, H, W, 2) float32, flow[i]: frame i -> i+1

Backends: OpenCV's TV-L1 (contrib), DIS and Farneback, and torchvision's RAFT (small and large).
Flow is in pixels of the given frames, u along x (right), v along y (down).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from schemas.errors import UserError

log = logging.getLogger(__name__)


class FlowError(ValueError):
    """Frames a flow estimator cannot work on; the message says why."""


class FlowEstimator(Protocol):
    name: str

    def estimate(self, frames: np.ndarray, initial: np.ndarray | None = None) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB -> (T-1, H, W, 2) float32. `initial`: flow of the pair before the
        first, to warm-start from (ignored by estimators that cannot use it)."""
        ...

    def describe(self) -> dict:
        """Method, parameters and library versions, for the store's attributes."""
        ...


def check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        shape = getattr(frames, "shape", None)
        raise FlowError(f"frames must be a (T, H, W, 3) uint8 array, got {shape} {getattr(frames, 'dtype', type(frames))}")
    if len(frames) < 2:
        raise FlowError(f"flow needs at least 2 frames, got {len(frames)}")


def _gray(frames: np.ndarray) -> list[np.ndarray]:
    return [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in frames]


# ---------------------------------------------------------------- OpenCV


@dataclass(frozen=True)
class TVL1Config:
    """cv2.optflow.DualTVL1OpticalFlow parameters; defaults are OpenCV's (also denseflow's and mmaction2's)."""

    tau: float = 0.25
    lambda_: float = 0.15
    theta: float = 0.3
    nscales: int = 5
    warps: int = 5
    epsilon: float = 0.01
    inner_iterations: int = 30
    outer_iterations: int = 10
    scale_step: float = 0.8
    gamma: float = 0.0
    median_filtering: int = 5
    warm_start: bool = False  # start each pair from the previous pair's flow


class TVL1:
    name = "tvl1"

    def __init__(self, config: TVL1Config = TVL1Config()):
        self.config = config
        c = config
        self._tvl1 = cv2.optflow.DualTVL1OpticalFlow_create(
            tau=c.tau, lambda_=c.lambda_, theta=c.theta, nscales=c.nscales, warps=c.warps, epsilon=c.epsilon,
            innnerIterations=c.inner_iterations, outerIterations=c.outer_iterations, scaleStep=c.scale_step,
            gamma=c.gamma, medianFiltering=c.median_filtering, useInitialFlow=False,
        )  # fmt: skip  ("innner" is OpenCV's own spelling of the keyword)

    def estimate(self, frames: np.ndarray, initial: np.ndarray | None = None) -> np.ndarray:
        check_frames(frames)
        gray = _gray(frames)
        out = np.empty((len(frames) - 1, *frames.shape[1:3], 2), np.float32)
        previous = initial if self.config.warm_start else None
        for i in range(len(frames) - 1):
            if previous is not None:
                self._tvl1.setUseInitialFlow(True)
                flow = self._tvl1.calc(gray[i], gray[i + 1], previous.astype(np.float32).copy())
            else:
                self._tvl1.setUseInitialFlow(False)
                flow = self._tvl1.calc(gray[i], gray[i + 1], None)
            out[i] = flow
            previous = flow if self.config.warm_start else None
        return out

    def describe(self) -> dict:
        return {"method": self.name, "params": asdict(self.config), "opencv": cv2.__version__}


@dataclass(frozen=True)
class DISConfig:
    """cv2.DISOpticalFlow: a preset, and optionally its finer knobs."""

    preset: str = "medium"  # ultrafast | fast | medium
    variational_refinement_iterations: int | None = None


class DIS:
    name = "dis"
    _PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}  # fmt: skip

    def __init__(self, config: DISConfig = DISConfig()):
        if config.preset not in self._PRESETS:
            raise ValueError(f"DIS preset {config.preset!r} is not one of {sorted(self._PRESETS)}")
        self.config = config
        self._dis = cv2.DISOpticalFlow_create(self._PRESETS[config.preset])
        if config.variational_refinement_iterations is not None:
            self._dis.setVariationalRefinementIterations(config.variational_refinement_iterations)

    def estimate(self, frames: np.ndarray, initial: np.ndarray | None = None) -> np.ndarray:
        check_frames(frames)
        gray = _gray(frames)
        return np.stack([self._dis.calc(gray[i], gray[i + 1], None) for i in range(len(frames) - 1)])

    def describe(self) -> dict:
        return {"method": self.name, "params": asdict(self.config), "opencv": cv2.__version__}


@dataclass(frozen=True)
class FarnebackConfig:
    """cv2.calcOpticalFlowFarneback parameters (OpenCV's documented example values)."""

    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 15
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.2


class Farneback:
    name = "farneback"

    def __init__(self, config: FarnebackConfig = FarnebackConfig()):
        self.config = config

    def estimate(self, frames: np.ndarray, initial: np.ndarray | None = None) -> np.ndarray:
        check_frames(frames)
        gray, c = _gray(frames), self.config
        return np.stack([
            cv2.calcOpticalFlowFarneback(gray[i], gray[i + 1], None, c.pyr_scale, c.levels, c.winsize, c.iterations, c.poly_n, c.poly_sigma, 0)
            for i in range(len(frames) - 1)
        ])  # fmt: skip

    def describe(self) -> dict:
        return {"method": self.name, "params": asdict(self.config), "opencv": cv2.__version__}


# ---------------------------------------------------------------- RAFT (torchvision)


class RaftWeightsMissing(UserError, FileNotFoundError):
    pass


@dataclass(frozen=True)
class RAFTConfig:
    """torchvision RAFT. `weights`: a local checkpoint path, or "torchvision" for the file in
    torchvision's cache (never downloaded here)."""

    size: str = "small"  # small | large
    weights: str = "torchvision"
    iterations: int = 12
    batch_size: int = 64  # frame pairs a forward pass (halved while the device runs out of memory)
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda


class RAFT:
    def __init__(self, config: RAFTConfig = RAFTConfig()):
        import torch
        from torchvision.models import optical_flow

        if config.size not in ("small", "large"):
            raise ValueError(f"RAFT size must be 'small' or 'large', got {config.size!r}")
        self.config = config
        self.name = f"raft_{config.size}"
        builder = optical_flow.raft_small if config.size == "small" else optical_flow.raft_large
        enum = optical_flow.Raft_Small_Weights if config.size == "small" else optical_flow.Raft_Large_Weights
        path = self._weights_path(config.weights, enum.DEFAULT.url)
        model = builder(weights=None)
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.batch_size = config.batch_size
        self._torch = torch

    @staticmethod
    def _weights_path(weights: str, url: str) -> Path:
        import torch

        if weights != "torchvision":
            path = Path(weights).expanduser()
            if not path.is_file():
                raise RaftWeightsMissing(f"RAFT weights file {path} does not exist")
            return path
        path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]
        if not path.is_file():
            raise RaftWeightsMissing(
                f"RAFT weights are not in torchvision's cache ({path}) and are never downloaded at run time. "
                f"Download {url} on a machine with internet access and either copy it to {path} or give its path as the "
                "weights"
            )
        return path

    def estimate(self, frames: np.ndarray, initial: np.ndarray | None = None) -> np.ndarray:
        check_frames(frames)
        torch = self._torch
        height, width = frames.shape[1:3]
        # RAFT works at 1/8 resolution: pad to a multiple of 8 (replicating edges), crop back after.
        pad_h, pad_w = (-height) % 8, (-width) % 8
        with torch.inference_mode():  # the frames cross as uint8 and are scaled on the device
            images = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            if pad_h or pad_w:
                images = torch.nn.functional.pad(images, (0, pad_w, 0, pad_h), mode="replicate")
            out = np.empty((len(frames) - 1, height, width, 2), np.float32)
            start = 0
            while start < len(frames) - 1:
                stop = min(start + self.batch_size, len(frames) - 1)
                try:
                    flow = self.model(images[start:stop], images[start + 1 : stop + 1], num_flow_updates=self.config.iterations)[-1]
                except torch.OutOfMemoryError:
                    if self.batch_size == 1:
                        raise
                    torch.cuda.empty_cache()
                    failed, self.batch_size = self.batch_size, self.batch_size // 2  # each pair's flow does not depend on its batch
                    log.warning("RAFT: out of device memory at %d frame pairs a batch; going on at %d (flow.%s.batch_size)",
                                failed, self.batch_size, self.name)  # fmt: skip
                    continue
                out[start:stop] = flow[:, :, :height, :width].permute(0, 2, 3, 1).cpu().numpy()
                start = stop
        return out

    def describe(self) -> dict:
        import torchvision

        return {"method": self.name, "params": asdict(self.config), "torch": self._torch.__version__,
                "torchvision": torchvision.__version__}  # fmt: skip
