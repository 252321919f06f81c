"""MSCL's losses against naive per-sample references and values computable by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.models.losses import info_nce, lmcl


def naive_info_nce(q, k, queue, t):
    """One query at a time, straight from the definition: -log(exp(q.k/t) / sum of all exps)."""
    total = 0.0
    for i in range(len(q)):
        positive = math.exp(float(q[i] @ k[i]) / t)
        negatives = sum(math.exp(float(q[i] @ n) / t) for n in queue)
        total += -math.log(positive / (positive + negatives))
    return total / len(q)


def naive_lmcl(rgb, flow, rotated, t):
    """For each sample and RGB time step: positive the same step of the flow, negatives the other
    flow steps and every rotated-flow step."""
    total, count = 0.0, 0
    b, _, steps = rgb.shape
    for i in range(b):
        for s in range(steps):
            candidates = [flow[i, :, u] for u in range(steps)] + ([rotated[i, :, u] for u in range(steps)] if rotated is not None else [])
            exps = [math.exp(float(rgb[i, :, s] @ c) / t) for c in candidates]
            total += -math.log(exps[s] / sum(exps))
            count += 1
    return total / count


def unit(*shape, dim=1, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=dim)


def test_info_nce_matches_the_naive_reference():
    q, k, queue = unit(6, 16, seed=1), unit(6, 16, seed=2), unit(20, 16, seed=3)
    assert float(info_nce(q, k, queue, 0.07)) == pytest.approx(naive_info_nce(q, k, queue, 0.07), rel=1e-9)


def test_info_nce_exact_value_when_negatives_are_orthogonal():
    """q = k, every negative orthogonal: logits 1/t and K zeros, loss = log(1 + K exp(-1/t))."""
    q = torch.eye(4, 8, dtype=torch.float64)
    queue = torch.eye(8, dtype=torch.float64)[4:]  # 4 negatives orthogonal to every query
    t = 0.5
    assert float(info_nce(q, q, queue, t)) == pytest.approx(math.log(1 + 4 * math.exp(-1 / t)), rel=1e-12)
    # A query identical to one of its negatives: the positive is only one of two equal best logits.
    assert float(info_nce(q[:1], q[:1], q[:1], t)) == pytest.approx(math.log(2), rel=1e-12)


def test_lmcl_matches_the_naive_reference_with_and_without_rotated_flow():
    rgb, flow, rotated = unit(3, 8, 4, seed=4), unit(3, 8, 4, seed=5), unit(3, 8, 4, seed=6)
    assert float(lmcl(rgb, flow, rotated, 0.1)) == pytest.approx(naive_lmcl(rgb, flow, rotated, 0.1), rel=1e-9)
    assert float(lmcl(rgb, flow, None, 0.1)) == pytest.approx(naive_lmcl(rgb, flow, None, 0.1), rel=1e-9)


def test_lmcl_exact_value_for_orthogonal_time_steps():
    """Flow steps one-hot and orthogonal, RGB equal to the flow, rotated flow orthogonal to all:
    each step has logit 1/t once and 0 for the 2T-1 others: loss = log(1 + (2T-1) exp(-1/t))."""
    steps, t = 4, 0.2
    flow = torch.eye(2 * steps, dtype=torch.float64)[:, :steps].unsqueeze(0)  # (1, C=8, T=4): steps are e_0..e_3
    rotated = torch.eye(2 * steps, dtype=torch.float64)[:, steps:].unsqueeze(0)  # e_4..e_7
    assert float(lmcl(flow, flow, rotated, t)) == pytest.approx(math.log(1 + (2 * steps - 1) * math.exp(-1 / t)), rel=1e-12)
    # The rotated flow at the same appearance is a negative: RGB matching it instead costs a lot.
    assert float(lmcl(rotated, flow, rotated, t)) > 5


def test_losses_have_gradients_only_through_their_inputs():
    q = unit(4, 8, seed=10).float().requires_grad_()
    loss = info_nce(q, unit(4, 8, seed=11).float(), unit(6, 8, seed=12).float(), 0.07)
    loss.backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


def test_lmcl_refuses_time_steps_that_do_not_pair_up():
    with pytest.raises(ValueError, match="RGB features .*4.*flow .*3"):
        lmcl(unit(2, 8, 4), unit(2, 8, 3), unit(2, 8, 3), 0.07)


def test_losses_compute_in_float32_under_autocast():
    """Similarities over a temperature of 0.07 need float32: bfloat16 logits would be off by ~1%."""
    g = torch.Generator().manual_seed(3)
    query, key, queue = (F.normalize(torch.randn(*shape, generator=g), dim=1) for shape in ((8, 32), (8, 32), (64, 32)))
    rgb, flow, rotated = (F.normalize(torch.randn(4, 16, 4, generator=g), dim=1) for _ in range(3))
    plain = info_nce(query, key, queue, 0.07), lmcl(rgb, flow, rotated, 0.07)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = info_nce(query.bfloat16(), key.bfloat16(), queue, 0.07), lmcl(rgb, flow, rotated, 0.07)
    assert mixed[1].dtype == torch.float32 and torch.allclose(mixed[1], plain[1], atol=1e-6)
    # bfloat16 inputs lose their own precision, but nothing more is lost inside the loss:
    reference = info_nce(query.bfloat16().float(), key.bfloat16().float(), queue, 0.07)
    assert mixed[0].dtype == torch.float32 and torch.allclose(mixed[0], reference, atol=1e-6)
