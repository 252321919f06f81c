"""MSCL's losses as small pure functions (../shared/MSCL.md, 1-2).

- `info_nce`: MoCo's clip-level loss. A query's positive is its key; its negatives are a queue of
  past keys. Used for RGB-RGB, flow-flow, rotated flow, and across modalities.
- `lmcl`: Local Motion Contrastive Learning. For RGB time step t of a clip, the positive is the
  flow feature at the same t of the same clip; the negatives are the other time steps of that
  flow and every time step of the same clip's rotated flow (FRA): same appearance, wrong motion.

All inputs are L2-normalised by the caller (pipeline/models/mscl.py); the functions never read or
change a queue, so which keys a queue holds is decided in one place (`pipeline.models.mscl`). They compute
in float32 even under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over the batch of -log softmax([q.k, q.queue_1, ..., q.queue_K] / T)[0].

    query, key: (B, D) L2-normalised; queue: (K, D) L2-normalised negatives, which must not hold
    this batch's keys (else a positive sits among its own negatives).
    """
    with float32(query):
        query, key, queue = full(query), full(key), full(queue)
        positive = (query * key).sum(dim=1, keepdim=True)  # (B, 1)
        negatives = query @ queue.t()  # (B, K)
        logits = torch.cat([positive, negatives], dim=1) / temperature
        return F.cross_entropy(logits, torch.zeros(len(query), dtype=torch.long, device=query.device))


def lmcl(rgb: torch.Tensor, flow: torch.Tensor, flow_rotated: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """Frame-level cross-modal loss, within each sample (no queue).

    rgb, flow, flow_rotated: (B, C, T) time-keeping features of the same clip, L2-normalised over C.
    Similarities of RGB step t to the flow's steps and the rotated flow's steps, (B, T, 2T) / T_emp,
    cross-entropy with label t. Without rotated flow the negatives are the other time steps only.
    """
    if flow.shape != rgb.shape or (flow_rotated is not None and flow_rotated.shape != rgb.shape):
        rotated = "" if flow_rotated is None else f", rotated flow {tuple(flow_rotated.shape)}"
        raise ValueError(f"LMCL pairs RGB and flow time steps one to one: RGB features {tuple(rgb.shape)}, "
                         f"flow {tuple(flow.shape)}{rotated}")  # fmt: skip
    with float32(rgb):
        candidates = flow if flow_rotated is None else torch.cat([flow, flow_rotated], dim=2)  # (B, C, T or 2T)
        logits = torch.einsum("bct,bcs->bts", full(rgb), full(candidates)) / temperature  # (B, T, T or 2T)
        steps = rgb.shape[2]
        labels = torch.arange(steps, device=rgb.device).expand(len(rgb), steps)
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


def full(x: torch.Tensor) -> torch.Tensor:
    """x in float32 at least (float64 stays)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def float32(like: torch.Tensor):
    """A context where autocast is off: the losses' similarities, divided by temperatures as low as
    0.07, need more than bfloat16's 8 bits of mantissa, whatever precision the encoders ran in."""
    return torch.autocast(like.device.type, enabled=False)


