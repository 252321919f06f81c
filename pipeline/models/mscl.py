"""The MSCL model: query and momentum key encoders per modality, their queues, and every loss of
one step (../shared/MSCL.md, sections 1-3). `method="rgb_only"` is the plain MoCo baseline: the same
RGB encoder and RGB-RGB loss, nothing else.

One step, per batch of two views (1, 2) of each video:
- RGB-RGB, flow-flow and rotated flow-flow: view 1's query against view 2's key (the authors'; view
  2 then needs no query and view 1 no key), and with `symmetric` the other way round too, the two
  averaged; negatives from that modality's queue;
- cross-modal: RGB query against flow key and flow query against RGB key, then the same with the
  rotated flow (FRA), negatives from the key's modality's queue;
- LMCL on each query view: RGB's time-keeping features against the same view's flow and rotated flow.
Every loss reads the queues as they were before this step; the step's keys are pushed only after.
(The authors' release reads the flow queue after pushing this step's base-flow keys for its
RGB->flow terms, where a positive is then among its negatives, and for the rotated flow-flow and
RGB->rotated-flow terms: docs/differences.md.)

Batch norm sees `bn_splits` parts of a batch at a time, as MoCo's split BN stands in for one GPU's
batch each on one device: queries in their order, keys after a random permutation ("shuffled BN"),
so a query and its key never share batch statistics (a shared statistic lets the model find its
positive without learning anything). The permutations come from a CPU generator of the model's
own, which checkpoints hold: a resumed run repeats them on any device.

With `fame`, view 1's RGB clips may first be turned into their moving foreground over another
clip's background (FAME, pipeline/models/fame.py), so that RGB-RGB positives share the motion and not the
scene.

The cross-modal losses are added at weight 1 each (RGB->flow and flow->RGB, and both again with the
rotated flow), as the authors' release adds them; `weights.cross` and `weights.cross_rot` scale
each pair's sum.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.flow.colour import wheel_colours
from pipeline.models.encoders import Encoder, FlowInput, flow_backbone, rgb_backbone
from pipeline.models.fame import background_order, foreground_mask, merge
from pipeline.models.losses import info_nce, lmcl
from schemas.params import TrainParams

Method = Literal["mscl", "rgb_only"]


def key_momentum(step: int, total: int, start: float) -> float:
    """Cosine schedule of the key encoders' momentum: `start` at step 0, 1 at the end."""
    return 1.0 - (1.0 - start) * (math.cos(math.pi * min(step, total) / max(total, 1)) + 1.0) / 2.0


def _gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, in rank order (keys for the shared queue under DDP)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def flow_encoder_input(flow: torch.Tensor, flow_input: FlowInput) -> torch.Tensor:
    """(..., 2, T, H, W) flow as the flow encoder takes it: as it is ("uv"), or drawn in the colour
    wheel, (..., 3, T, H, W) in [0, 1] ("colour", the authors' input)."""
    if flow_input == "uv":
        return flow
    return wheel_colours(flow.transpose(-4, -3)).transpose(-4, -3) / 255


class MSCL(nn.Module):
    def __init__(self, params: TrainParams, method: Method = "mscl", *, flow_input: FlowInput = "uv"):
        super().__init__()
        if method not in ("mscl", "rgb_only"):
            raise ValueError(f"unknown method {method!r}; allowed: mscl, rgb_only")
        self.params, self.method, self.flow_input = params, method, flow_input
        p = params
        self.shuffle_generator = torch.Generator().manual_seed(p.seed)  # shuffled-BN permutations (state in checkpoints)
        self.use_flow = method == "mscl"
        self.use_lmcl = self.use_flow and p.lmcl
        self.use_fra = self.use_flow and p.fra
        self.use_cross = self.use_flow and p.cross_modal
        backbone = rgb_backbone(p.encoder, p.width, tuple(p.blocks))
        self.rgb = Encoder(backbone, "rgb", p.embed_dim, p.local_dim if self.use_lmcl else None, p.head_bn)
        self.rgb_key = self._key_copy(self.rgb)
        self.register_buffer("rgb_queue", F.normalize(torch.randn(p.queue_size, p.embed_dim), dim=1))
        if self.use_flow:
            flow = flow_backbone(backbone.widths, p.flow_width_ratio, tuple(p.flow_blocks), flow_input)
            self.flow = Encoder(flow, "flow", p.embed_dim, p.local_dim if self.use_lmcl else None, p.head_bn)
            self.flow_key = self._key_copy(self.flow)
            self.register_buffer("flow_queue", F.normalize(torch.randn(p.queue_size, p.embed_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        # queue_ptr read once and then followed here: reading it each step would wait for the device.
        self._ptr: int | None = None
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "_ptr", None))

    @staticmethod
    def _key_copy(encoder: Encoder) -> Encoder:
        key = copy.deepcopy(encoder)
        for param in key.parameters():
            param.requires_grad_(False)
        return key

    # -- the momentum encoders and queues --------------------------------------------------------

    @torch.no_grad()
    def momentum_update(self, momentum: float) -> None:
        pairs = [(self.rgb, self.rgb_key)] + ([(self.flow, self.flow_key)] if self.use_flow else [])
        for query, key in pairs:
            for q, k in zip(query.parameters(), key.parameters(), strict=True):
                k.mul_(momentum).add_(q.detach(), alpha=1.0 - momentum)

    def _bn_parts(self, batch: int) -> int:
        """How many parts batch norm sees a batch in (1 when parts would hold fewer than 2 clips)."""
        splits = self.params.bn_splits
        return splits if splits > 1 and batch >= 2 * splits else 1

    @torch.no_grad()
    def _keys(self, encoder: Encoder, x: torch.Tensor) -> torch.Tensor:
        parts = self._bn_parts(len(x))
        if parts == 1:
            return F.normalize(encoder(x)[0].float(), dim=1)
        order = torch.randperm(len(x), generator=self.shuffle_generator).to(x.device)
        keys = torch.cat([encoder(x[part])[0] for part in order.chunk(parts)])
        return F.normalize(keys[torch.argsort(order)].float(), dim=1)

    @torch.no_grad()
    def enqueue(self, keys: dict[str, torch.Tensor]) -> None:
        """Push this step's keys (from every rank) over the oldest entries of each queue; a queue
        smaller than the global batch keeps the newest of them."""
        ptr = int(self.queue_ptr) if self._ptr is None else self._ptr
        size = self.params.queue_size
        for name, key in keys.items():
            key = _gather(key.detach().float())[-size:]
            queue = getattr(self, f"{name}_queue")
            queue[(ptr + torch.arange(len(key), device=key.device)) % size] = key
        self._ptr = (ptr + len(key)) % size
        self.queue_ptr.fill_(self._ptr)

    # -- one step ---------------------------------------------------------------------------------

    def forward(self, batch: dict[str, torch.Tensor], momentum: float) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(total loss, each weighted part, keys to enqueue after the optimiser step)."""
        p = self.params
        t = p.temperature
        self.momentum_update(momentum)
        if p.fame > 0:
            batch = self.fame(batch)
        # View 1 queries view 2's key (the authors'); symmetric, each view queries the other's too.
        query_views, key_views = ((0, 1), (0, 1)) if p.symmetric else ((0,), (1,))

        def encode(encoder, key_encoder, clips):
            queries = {v: self._query(encoder, clips[:, v], self.use_lmcl) for v in query_views}
            return ({v: q for v, (q, _) in queries.items()}, {v: local for v, (_, local) in queries.items()},
                    {v: self._keys(key_encoder, clips[:, v]) for v in key_views})  # fmt: skip

        rgb_q, rgb_local, rgb_k = encode(self.rgb, self.rgb_key, batch["rgb"])
        rgb_queue = self.rgb_queue.clone()  # as it was before this step, whatever happens later
        parts = {"rgb": self._pairs(rgb_q, rgb_k, rgb_queue, t)}
        keys = {"rgb": rgb_k[1]}
        if self.use_flow:
            flow_queue = self.flow_queue.clone()
            flow_q, flow_local, flow_k = encode(self.flow, self.flow_key, flow_encoder_input(batch["flow"], self.flow_input))
            parts["flow"] = self._pairs(flow_q, flow_k, flow_queue, t)
            keys["flow"] = flow_k[1]
            rot_local = dict.fromkeys(query_views)
            if self.use_fra:
                rot_q, rot_local, rot_k = encode(self.flow, self.flow_key, flow_encoder_input(batch["flow_rot"], self.flow_input))
                parts["flow_rot"] = self._pairs(rot_q, rot_k, flow_queue, t)
            if self.use_cross:  # both directions, each at weight 1 (the authors' sum)
                parts["cross"] = self._pairs(rgb_q, flow_k, flow_queue, t) + self._pairs(flow_q, rgb_k, rgb_queue, t)
                if self.use_fra:
                    parts["cross_rot"] = self._pairs(rgb_q, rot_k, flow_queue, t) + self._pairs(rot_q, rgb_k, rgb_queue, t)
            if self.use_lmcl:  # on every query view
                parts["lmcl"] = sum(
                    lmcl(F.normalize(rgb_local[v], dim=1), F.normalize(flow_local[v], dim=1),
                         None if rot_local[v] is None else F.normalize(rot_local[v], dim=1), p.lmcl_temperature)
                    for v in query_views
                ) / len(query_views)  # fmt: skip
        # The baseline is plain MoCo: its one loss at weight 1, whatever MSCL's weights say.
        weights = p.weights.model_dump() if self.use_flow else {"rgb": 1.0}
        weighted = {name: weights[name] * value for name, value in parts.items()}
        return sum(weighted.values()), weighted, keys

    def fame(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch with each view-1 RGB clip, with probability `fame`, turned into its moving
        foreground over another clip's background (pipeline/models/fame.py; the mask from view 1's flow)."""
        query = batch["rgb"][:, 0]
        mask = foreground_mask(batch["flow"][:, 0], self.params.fame_share)
        order = background_order(len(query), self.shuffle_generator).to(query.device)
        chosen = (torch.rand(len(query), generator=self.shuffle_generator) < self.params.fame).to(query.device)
        merged = torch.where(chosen.view(-1, 1, 1, 1, 1), merge(query, mask, order), query)
        return {**batch, "rgb": torch.stack([merged, batch["rgb"][:, 1]], dim=1)}

    def chance_losses(self, clip_len: int) -> dict[str, float]:
        """Each weighted loss part of an encoder that knows nothing (a uniform softmax over its
        candidates): log(queue + 1) for a clip-level pair, twice that for the two cross-modal
        directions, log(candidates) for LMCL. A curve must fall below this to have learned."""
        p = self.params
        clip = math.log(p.queue_size + 1)
        chance = {"rgb": clip}
        if self.use_flow:
            chance["flow"] = clip
            if self.use_fra:
                chance["flow_rot"] = clip
            if self.use_cross:
                chance["cross"] = 2 * clip
                if self.use_fra:
                    chance["cross_rot"] = 2 * clip
            if self.use_lmcl:  # ceil(T/2) time steps, as many again of the rotated flow with FRA
                chance["lmcl"] = math.log(math.ceil(clip_len / 2) * (2 if self.use_fra else 1))
        weights = p.weights.model_dump() if self.use_flow else {"rgb": 1.0}
        return {name: round(weights[name] * value, 5) for name, value in chance.items()}

    def _query(self, encoder: Encoder, x: torch.Tensor, local: bool):
        """Query embeddings (and local features), batch norm seeing `bn_splits` parts in turn."""
        outputs = [encoder(part, local=local) for part in x.chunk(self._bn_parts(len(x)))]
        embedding = torch.cat([out[0] for out in outputs]).float()  # float32 from here on, even under autocast
        features = torch.cat([out[1] for out in outputs]).float() if local else None
        return F.normalize(embedding, dim=1), features

    def _pairs(self, queries: dict, keys: dict, queue: torch.Tensor, temperature: float) -> torch.Tensor:
        """View 1's query against view 2's key, and (symmetric) view 2's against view 1's, averaged."""
        loss = info_nce(queries[0], keys[1], queue, temperature)
        if self.params.symmetric:
            loss = (loss + info_nce(queries[1], keys[0], queue, temperature)) / 2
        return loss
