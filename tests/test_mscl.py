"""Encoders, the exported backbone, the MoCo machinery (queues, momentum, shuffled BN) and the
ablation switches of the MSCL model."""

import math

import pytest
import torch
from torchvision.models.video import r3d_18

import pipeline.models.mscl as mscl_module
from pipeline.models.encoders import CompactR3D, Encoder, flow_backbone, pooled
from pipeline.models.mscl import MSCL, flow_encoder_input, key_momentum
from schemas.params import LossWeights, TrainParams

TINY = TrainParams(encoder="compact", width=8, queue_size=16, batch_size=4, flow_width_ratio=0.5, flow_blocks=(1, 1, 1, 1), local_dim=16)


def batch(b=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"rgb": torch.randn(b, 2, 3, 8, size, size, generator=g), "flow": torch.randn(b, 2, 2, 8, size, size, generator=g),
            "flow_rot": torch.randn(b, 2, 2, 8, size, size, generator=g)}  # fmt: skip


def test_encoders_keep_time_for_lmcl():
    rgb = Encoder(CompactR3D(8), "rgb", 128, 16)
    flow = Encoder(flow_backbone(rgb.backbone.widths, 0.25), "flow", 128, 16)
    embedding, local = rgb(torch.randn(2, 3, 8, 64, 64), local=True)
    assert embedding.shape == (2, 128) and local.shape == (2, 16, 4)  # stage 2 of 8 frames: 4 steps
    embedding, local = flow(torch.randn(2, 2, 8, 64, 64), local=True)
    assert embedding.shape == (2, 128) and local.shape == (2, 16, 4)  # the stem halves time once, then kept
    assert flow.backbone.widths == (4, 4, 8, 16)  # a quarter of 8, 16, 32, 64 (at least 4)


def test_exported_r3d_18_backbone_loads_strictly_into_torchvision():
    model = MSCL(TINY.model_copy(update={"encoder": "r3d_18"}), "rgb_only")
    exported = model.rgb.backbone_state_dict()
    reference = r3d_18()
    reference.load_state_dict(exported, strict=True)
    reference.eval(), model.rgb.eval()
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        ours = pooled(model.rgb.backbone.stages(x))  # the feature evaluation and fine-tuning use
        theirs = reference.avgpool(reference.layer4(reference.layer3(reference.layer2(reference.layer1(reference.stem(x)))))).flatten(1)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_key_momentum_is_cosine_from_start_to_one():
    values = [key_momentum(s, 100, 0.99) for s in range(101)]
    assert values[0] == pytest.approx(0.99) and values[-1] == pytest.approx(1.0) and values[50] == pytest.approx(0.995)
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))


def test_a_positive_never_sits_among_its_own_negatives(monkeypatch):
    """Every loss sees the queues as they were before the step; the step's keys go in only after."""
    model = MSCL(TINY)
    seen = []
    original = mscl_module.info_nce

    def spy(query, key, queue, temperature):
        seen.append((key.detach().clone(), queue.detach().clone()))
        return original(query, key, queue, temperature)

    monkeypatch.setattr(mscl_module, "info_nce", spy)
    for step in range(3):  # queue of 16 = 4 steps of 4 keys: after step 1 the queue holds earlier keys
        before = {"rgb": model.rgb_queue.clone(), "flow": model.flow_queue.clone()}
        seen.clear()
        _, _, keys = model(batch(seed=step), 0.99)
        assert torch.equal(model.rgb_queue, before["rgb"]) and torch.equal(model.flow_queue, before["flow"])
        for key, queue in seen:
            distances = torch.cdist(key.float(), queue.float())
            assert (distances > 1e-4).all(), f"step {step}: a positive key is among the negatives"
        model.enqueue(keys)
        assert torch.allclose(model.rgb_queue[(4 * step) % 16 : (4 * step) % 16 + 4], keys["rgb"])
        assert torch.allclose(model.flow_queue[(4 * step) % 16 : (4 * step) % 16 + 4], keys["flow"])


def test_shuffled_bn_keys_are_the_plain_keys_in_eval_mode():
    """The permutation is undone: with fixed statistics, split keys equal unsplit ones row by row."""
    model = MSCL(TINY.model_copy(update={"bn_splits": 2}), "rgb_only").eval()
    x = torch.randn(8, 3, 8, 32, 32)
    with torch.no_grad():
        plain = torch.nn.functional.normalize(model.rgb_key(x)[0], dim=1)
    assert torch.allclose(model._keys(model.rgb_key, x), plain, atol=1e-5)


def test_momentum_update_moves_keys_towards_queries():
    model = MSCL(TINY, "rgb_only")
    with torch.no_grad():
        for q in model.rgb.parameters():
            q.add_(1.0)
    key_before = [k.clone() for k in model.rgb_key.parameters()]
    model.momentum_update(0.9)
    for k, k0, q in zip(model.rgb_key.parameters(), key_before, model.rgb.parameters(), strict=True):
        assert torch.allclose(k, 0.9 * k0 + 0.1 * q)
        assert not k.requires_grad


@pytest.mark.parametrize(
    "update, parts",
    [
        ({}, {"rgb", "flow", "flow_rot", "cross", "cross_rot", "lmcl"}),
        ({"lmcl": False}, {"rgb", "flow", "flow_rot", "cross", "cross_rot"}),
        ({"fra": False}, {"rgb", "flow", "cross", "lmcl"}),
        ({"cross_modal": False}, {"rgb", "flow", "flow_rot", "lmcl"}),
    ],
)
def test_switches_choose_the_losses(update, parts):
    model = MSCL(TINY.model_copy(update=update))
    loss, weighted, _ = model(batch(), 0.99)
    assert set(weighted) == parts
    assert torch.isclose(loss, sum(weighted.values()))
    loss.backward()
    assert all(q.grad is not None for q in model.parameters() if q.requires_grad)  # no idle parameters (DDP)


def test_rgb_only_is_plain_moco_and_weights_scale_their_loss():
    model = MSCL(TINY.model_copy(update={"weights": LossWeights(rgb=0.0)}), "rgb_only")  # the baseline keeps weight 1
    assert not hasattr(model, "flow") and not hasattr(model, "flow_queue")
    plain = MSCL(TINY, "rgb_only")
    plain.load_state_dict(model.state_dict())
    torch.manual_seed(0)
    loss, weighted, keys = model({"rgb": batch()["rgb"]}, 0.99)
    torch.manual_seed(0)
    plain_loss, _, _ = plain({"rgb": batch()["rgb"]}, 0.99)
    assert set(weighted) == {"rgb"} and set(keys) == {"rgb"}
    assert float(loss.detach()) > 0 and float(loss.detach()) == pytest.approx(float(plain_loss.detach()), rel=1e-6)
    heavy = MSCL(TINY.model_copy(update={"weights": LossWeights(lmcl=3.0)}))
    light = MSCL(TINY)
    light.load_state_dict(heavy.state_dict())
    torch.manual_seed(0)
    _, w_heavy, _ = heavy(batch(), 0.99)
    torch.manual_seed(0)
    _, w_light, _ = light(batch(), 0.99)
    assert float(w_heavy["lmcl"].detach()) == pytest.approx(3 * float(w_light["lmcl"].detach()), rel=1e-5)
    assert float(w_heavy["rgb"].detach()) == pytest.approx(float(w_light["rgb"].detach()), rel=1e-5)


# -- fixes found against the authors' release and the paper (docs/differences.md) ------------------


def clip_batch(b=4, size=32, frames=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"rgb": torch.randn(b, 2, 3, frames, size, size, generator=g), "flow": torch.randn(b, 2, 2, frames, size, size, generator=g),
            "flow_rot": torch.randn(b, 2, 2, frames, size, size, generator=g)}  # fmt: skip


@pytest.mark.parametrize("frames", [5, 7, 8])
@pytest.mark.parametrize("flow_input", ["uv", "colour"])
def test_rgb_and_flow_keep_the_same_time_steps_for_any_clip_length(frames, flow_input, monkeypatch):
    """LMCL pairs RGB step t with flow step t: with 7 frames RGB stage 2 has 4 steps, and a flow stem
    that gave 3 would make the first rotated-flow step the label of the last RGB step."""
    model = MSCL(TINY, flow_input=flow_input)
    seen = []
    original = mscl_module.lmcl

    def spy(rgb, flow, rotated, temperature):
        seen.append((rgb.shape, flow.shape, rotated.shape))
        return original(rgb, flow, rotated, temperature)

    monkeypatch.setattr(mscl_module, "lmcl", spy)
    loss, _, _ = model(clip_batch(frames=frames), 0.99)
    assert torch.isfinite(loss)
    steps = (frames + 1) // 2
    assert seen and all(r == f == rot == (4, 16, steps) for r, f, rot in seen)


def test_a_queue_smaller_than_the_batch_keeps_the_newest_keys():
    model = MSCL(TINY.model_copy(update={"queue_size": 4, "batch_size": 8}))
    _, _, keys = model(clip_batch(b=8), 0.99)
    model.enqueue(keys)
    assert torch.equal(model.rgb_queue, keys["rgb"][-4:]) and torch.equal(model.flow_queue, keys["flow"][-4:])
    assert int(model.queue_ptr) == 0
    _, _, keys = model(clip_batch(b=8, seed=1), 0.99)
    model.enqueue(keys)
    assert torch.equal(model.rgb_queue, keys["rgb"][-4:])


def test_shuffled_bn_draws_from_the_models_own_generator():
    """The permutations come from a CPU generator whose state a checkpoint holds, never from the
    device's generator or the global one: a resumed run on CUDA repeats the same shuffles."""
    model = MSCL(TINY.model_copy(update={"bn_splits": 2}), "rgb_only").train()
    x = torch.randn(8, 3, 8, 32, 32)
    model.shuffle_generator.manual_seed(5)
    state = model.shuffle_generator.get_state()
    first = model._keys(model.rgb_key, x)
    torch.rand(100)  # the global generator moves on: the shuffles must not care
    model.shuffle_generator.set_state(state)
    assert torch.equal(model._keys(model.rgb_key, x), first)
    model.shuffle_generator.manual_seed(6)
    assert not torch.allclose(model._keys(model.rgb_key, x), first)  # another permutation, other batch statistics


def test_queries_see_batch_norm_in_parts_as_on_one_gpu_each():
    """MoCo's split BN (its one-device form): each part of the query batch has its own statistics."""
    model = MSCL(TINY.model_copy(update={"bn_splits": 2}), "rgb_only").train()
    x = torch.randn(8, 3, 8, 32, 32)
    with torch.no_grad():
        split, _ = model._query(model.rgb, x, False)
        halves = torch.cat([torch.nn.functional.normalize(model.rgb(half)[0], dim=1) for half in x.chunk(2)])
        whole = torch.nn.functional.normalize(model.rgb(x)[0], dim=1)
    assert torch.allclose(split, halves, atol=1e-6) and not torch.allclose(split, whole, atol=1e-3)


@pytest.fixture
def info_nce_values(monkeypatch):
    """Every info_nce value a step computes, in order."""
    values = []
    original = mscl_module.info_nce

    def spy(*args):
        values.append(original(*args))
        return values[-1]

    monkeypatch.setattr(mscl_module, "info_nce", spy)
    return values


def test_cross_modal_terms_are_added_at_weight_one_each(info_nce_values):
    """The authors add RGB->flow, flow->RGB and both with rotated flow, each at weight 1."""
    model = MSCL(TINY.model_copy(update={"symmetric": False, "lmcl": False}))
    values = info_nce_values
    _, parts, _ = model(clip_batch(), 0.99)
    rgb, flow, flow_rot, rgb_to_flow, flow_to_rgb, rgb_to_rot, rot_to_rgb = values
    assert torch.equal(parts["cross"], rgb_to_flow + flow_to_rgb)
    assert torch.equal(parts["cross_rot"], rgb_to_rot + rot_to_rgb)
    assert torch.equal(parts["rgb"], rgb) and torch.equal(parts["flow_rot"], flow_rot)


def test_the_authors_flow_input_is_the_colour_wheel_through_a_frame_stem():
    model = MSCL(TINY, flow_input="colour").eval()
    stem = model.flow.backbone.stem[0]
    assert stem.in_channels == 3 and stem.kernel_size == (1, 7, 7) and stem.stride == (2, 2, 2)
    flow = clip_batch()["flow"]
    colour = flow_encoder_input(flow, "colour")
    assert colour.shape == (4, 2, 3, 8, 32, 32) and 0 <= colour.min() and colour.max() <= 1
    moved = flow.clone()
    moved[:, :, :, 1::2] = torch.randn_like(moved[:, :, :, 1::2])  # the odd flow frames
    with torch.no_grad():
        a = model.flow(flow_encoder_input(flow, "colour")[:, 0])[0]
        b = model.flow(flow_encoder_input(moved, "colour")[:, 0])[0]
    assert torch.allclose(a, b)  # the (1,7,7) stem of time stride 2 reads frames 0, 2, 4, 6 only


def test_heads_are_moco_v2s_unless_batch_norm_is_asked_for():
    plain = MSCL(TINY)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in plain.rgb.head.modules())
    assert [type(m).__name__ for m in plain.rgb.head] == ["Linear", "ReLU", "Linear"]
    with_bn = MSCL(TINY.model_copy(update={"head_bn": True}))
    assert [type(m).__name__ for m in with_bn.flow.head] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]


def test_symmetric_losses_average_both_directions(info_nce_values):
    values = info_nce_values
    _, parts, _ = MSCL(TINY.model_copy(update={"symmetric": True}), "rgb_only")({"rgb": clip_batch()["rgb"]}, 0.99)
    assert len(values) == 2 and torch.equal(parts["rgb"], (values[0] + values[1]) / 2)


def test_view_one_queries_view_two_only_unless_symmetric(monkeypatch):
    """The authors' losses need view 1's query and view 2's key, nothing else: half the forwards."""
    for symmetric, expected in ((False, (1, 1)), (True, (2, 2))):
        model = MSCL(TINY.model_copy(update={"symmetric": symmetric}), "rgb_only")
        calls = {"query": 0, "key": 0}
        query, keys = model._query, model._keys
        monkeypatch.setattr(model, "_query", lambda *a, q=query: (calls.__setitem__("query", calls["query"] + 1), q(*a))[1])
        monkeypatch.setattr(model, "_keys", lambda *a, k=keys: (calls.__setitem__("key", calls["key"] + 1), k(*a))[1])
        model({"rgb": clip_batch()["rgb"]}, 0.99)
        assert (calls["query"], calls["key"]) == expected


def test_chance_losses_are_a_uniform_softmax_over_each_losss_candidates():
    log17, log8 = math.log(17), math.log(8)  # queue of 16 and the positive; 4 steps and 4 rotated ones
    assert MSCL(TINY).chance_losses(8) == pytest.approx({"rgb": log17, "flow": log17, "flow_rot": log17, "cross": 2 * log17,
                                                         "cross_rot": 2 * log17, "lmcl": log8}, abs=1e-5)  # fmt: skip
    no_fra = MSCL(TINY.model_copy(update={"fra": False, "weights": LossWeights(rgb=0, lmcl=0.5)})).chance_losses(7)
    assert no_fra == pytest.approx({"rgb": 0.0, "flow": log17, "cross": 2 * log17, "lmcl": 0.5 * math.log(4)}, abs=1e-5)
    assert MSCL(TINY, "rgb_only").chance_losses(8) == pytest.approx({"rgb": log17}, abs=1e-5)
    # What InfoNCE gives when the query is alike to its key and to every negative:
    query = torch.nn.functional.normalize(torch.ones(1, 4), dim=1)
    assert float(mscl_module.info_nce(query, query, query.expand(16, 4), 0.2)) == pytest.approx(log17, abs=1e-5)


def test_the_queue_pointer_is_followed_on_the_host_and_reloaded_with_a_state():
    """enqueue reads queue_ptr from the device once (a read each step would wait for the GPU), then
    follows it itself; loading a state (a resumed run) makes it read the loaded pointer again."""
    model = MSCL(TINY.model_copy(update={"queue_size": 12, "batch_size": 4}))
    _, _, keys = model(clip_batch(b=4), 0.99)
    model.enqueue(keys)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.enqueue(keys)
    assert int(model.queue_ptr) == model._ptr == 8
    model.load_state_dict(state)
    assert model._ptr is None and int(model.queue_ptr) == 4
    model.enqueue(keys)
    model.enqueue(keys)
    assert int(model.queue_ptr) == 0 and torch.equal(model.rgb_queue[:4], keys["rgb"])  # wrapped round from 4
