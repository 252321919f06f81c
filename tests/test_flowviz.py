"""The one colour wheel: torchvision's flow_to_image to the integer, and flow_viz's darker long vectors."""

import numpy as np
import torch
from torchvision.utils import flow_to_image

from pipeline.flow.colour import flow_to_rgb, normalised_colours, wheel_colours


def test_the_wheel_is_torchvisions_flow_to_image():
    flow = torch.randn(3, 2, 40, 50, generator=torch.Generator().manual_seed(0)) * 4
    ours = normalised_colours(flow, float(torch.finfo(torch.float32).eps))
    assert torch.equal(ours.to(torch.uint8), torch.stack([flow_to_image(f) for f in flow]))
    pictures = flow_to_rgb(flow.permute(0, 2, 3, 1).numpy())
    assert pictures.dtype == np.uint8 and pictures.shape == (3, 40, 50, 3)


def test_still_flow_is_white_and_long_vectors_are_darker():
    still = wheel_colours(torch.zeros(1, 2, 4, 4))
    assert (still == 255).all()
    right = wheel_colours(torch.tensor([1.0, 0.0]).view(2, 1, 1))[:, 0, 0]
    longer = wheel_colours(torch.tensor([2.0, 0.0]).view(2, 1, 1))[:, 0, 0]
    assert torch.equal(longer, torch.floor(255 * (right / 255) * 0.75))
