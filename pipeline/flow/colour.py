"""Flow as colour: the Middlebury colour wheel (hue is the direction, saturation the speed), the one
implementation the project uses (MDS, the flow encoder's input, and the pictures of tools/show_flow.py).

The wheel follows RAFT's `flow_viz` (which the MSCL release uses for MDS and for its flow encoder's
input) and torchvision's `flow_to_image`, to the integer: 55 hues, colour values floor(255 * c).
"""

from __future__ import annotations

import numpy as np
import torch

# Baker et al., "A Database and Evaluation Methodology for Optical Flow": six ramps
# red-yellow-green-cyan-blue-magenta; along each, one channel moves by floor(255 * k / count).
_RAMPS = ((15, (255, 0, 0), (0, 1, 0)), (6, (255, 255, 0), (-1, 0, 0)), (4, (0, 255, 0), (0, 0, 1)),
          (11, (0, 255, 255), (0, -1, 0)), (13, (0, 0, 255), (1, 0, 0)), (6, (255, 0, 255), (0, 0, -1)))  # fmt: skip
WHEEL = torch.tensor(
    [[s + d * np.floor(255 * k / count) for s, d in zip(start, step, strict=True)] for count, start, step in _RAMPS for k in range(count)],
    dtype=torch.float64,
)  # (55, 3) RGB, 0-255


def wheel_colours(flow: torch.Tensor) -> torch.Tensor:
    """(..., 2, H, W) flow, 1 = full saturation -> (..., 3, H, W) colour values 0-255 (integers, as a
    uint8 image holds them), in the flow's float dtype. Vectors longer than 1 are drawn darker
    (x0.75), as flow_viz draws them."""
    u, v = flow.unbind(-3)
    radius = (u.square() + v.square()).sqrt().unsqueeze(-3)
    count = len(WHEEL)
    position = (torch.atan2(-v, -u) / torch.pi + 1) / 2 * (count - 1)
    k0 = position.floor().long()
    k1 = torch.where(k0 + 1 == count, 0, k0 + 1)
    fraction = (position - k0).unsqueeze(-3)
    wheel = WHEEL.to(flow.device, flow.dtype)
    colour = ((1 - fraction) * wheel[k0].movedim(-1, -3) + fraction * wheel[k1].movedim(-1, -3)) / 255
    colour = torch.where(radius <= 1, 1 - radius * (1 - colour), colour * 0.75)
    return (255 * colour).floor()


def normalised_colours(flow: torch.Tensor, epsilon: float) -> torch.Tensor:
    """(N, 2, H, W) -> (N, 3, H, W) 0-255: each frame divided by (its largest vector's length +
    epsilon) first, so its longest vector is (nearly) fully saturated. epsilon > 0 keeps every
    length below 1: 1e-5 is flow_viz's, float32's eps torchvision's."""
    largest = flow.square().sum(dim=-3).sqrt().amax(dim=(-2, -1))
    return wheel_colours(flow / (largest + epsilon)[..., None, None, None])


def flow_to_rgb(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """(N, H, W, 2) flow -> (N, H, W, 3) uint8 RGB; saturation 1 at `max_magnitude` (default: the largest)."""
    flow = np.asarray(flow, np.float32)
    top = float(max_magnitude or np.sqrt((flow**2).sum(-1)).max() or 1.0)
    colours = wheel_colours(torch.from_numpy(flow / top).permute(0, 3, 1, 2))
    return np.ascontiguousarray(colours.permute(0, 2, 3, 1).numpy().astype(np.uint8))
