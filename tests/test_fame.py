"""FAME from stored flow: the mask finds what moves against the camera, merging keeps each clip's
foreground over another clip's background, and the model applies it to view 1's RGB only."""

import pytest
import torch

from pipeline.models.fame import background_order, foreground_mask, merge
from pipeline.models.mscl import MSCL
from schemas.params import TrainParams


def panning_clip_with_a_moving_square(batch=2, t=4, size=40, top=8, left=20, side=12):
    flow = torch.zeros(batch, 2, t, size, size)
    flow[:, 0] = 1.5  # the camera pans right
    flow[:, 1, :, top : top + side, left : left + side] = 3.0  # the square also moves down
    return flow


def test_the_mask_is_the_share_of_pixels_that_move_against_the_camera():
    flow = panning_clip_with_a_moving_square()
    mask = foreground_mask(flow, share=144 / 1600)  # the square's share of the frame
    assert mask.shape == (2, 1, 1, 40, 40) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert int(mask[0].sum()) == 144
    square = mask[0, 0, 0, 8:20, 20:32]
    assert square.mean() > 0.8  # blurred speed: the square's core, and a rim next to it
    assert mask[0, 0, 0, 25:, :].sum() == 0 and mask[0, 0, 0, :, :10].sum() == 0  # the panning background is out
    assert int(foreground_mask(flow, share=0.5)[1].sum()) == 800
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        foreground_mask(flow, share=1.0)


def test_merge_keeps_the_foreground_over_another_clips_background():
    rgb = torch.stack([torch.full((3, 2, 4, 4), float(i)) for i in range(3)])  # clip i is all i
    mask = torch.zeros(3, 1, 1, 4, 4)
    mask[..., :2, :] = 1  # the top half is foreground
    merged = merge(rgb, mask, torch.tensor([2, 0, 1]))
    for i, source in enumerate([2, 0, 1]):
        assert (merged[i, :, :, :2] == i).all() and (merged[i, :, :, 2:] == source).all()
    with pytest.raises(ValueError, match="order has 2 entries for a batch of 3"):
        merge(rgb, mask, torch.tensor([1, 0]))


def test_every_clip_takes_another_clips_background():
    for seed in range(20):
        order = background_order(7, torch.Generator().manual_seed(seed))
        assert sorted(order.tolist()) == list(range(7)) and (order != torch.arange(7)).all()
    same = [background_order(7, torch.Generator().manual_seed(3)).tolist() for _ in range(2)]
    assert same[0] == same[1]
    assert background_order(1, torch.Generator()).tolist() == [0]


def test_the_model_merges_view_ones_rgb_only_and_only_when_asked(monkeypatch):
    params = TrainParams(encoder="compact", width=8, queue_size=16, batch_size=4, flow_width_ratio=0.5, flow_blocks=(1, 1, 1, 1),
                         local_dim=16, fame=1.0)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    batch = {"rgb": torch.randn(4, 2, 3, 8, 32, 32, generator=g), "flow": torch.randn(4, 2, 2, 8, 32, 32, generator=g)}
    batch["flow_rot"] = batch["flow"].flip(2)
    seen = []
    for method in ("mscl", "rgb_only"):
        for fame in (1.0, 0.0):
            model = MSCL(params.model_copy(update={"fame": fame}), method)
            monkeypatch.setattr(model.rgb, "forward", lambda x, local=False, m=model: seen.append(x.clone()) or type(m.rgb).forward(m.rgb, x, local))
            model(batch, 0.99)
            queries = torch.cat(seen[-2:]) if params.bn_splits > 1 else seen[-1]  # split BN: two halves
            if fame:
                assert not torch.equal(queries, batch["rgb"][:, 0])  # view 1 merged
                foreground = foreground_mask(batch["flow"][:, 0], 0.5).expand_as(queries).bool()
                assert torch.equal(queries[foreground], batch["rgb"][:, 0][foreground])  # its foreground kept
            else:
                assert torch.equal(queries, batch["rgb"][:, 0])
