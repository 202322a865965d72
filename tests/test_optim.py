"""Parameter groups, layer-wise lr decay scales, the warmup + cosine schedule, optimizers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mae.config import TrainConfig, effective_lr
from mae.engine.optim import build_optimizer, lr_at, param_groups_layer_decay, param_groups_weight_decay, set_lr
from mae.errors import UserError


def test_lr_schedule_warmup_and_cosine():
    cfg = TrainConfig(epochs=10, warmup_epochs=2, base_lr=1e-3, batch_size=64, accum_iter=2, min_lr=1e-6)
    peak = effective_lr(cfg)
    assert peak == pytest.approx(1e-3 * 64 / 256)  # batch sizes are global: accum_iter splits, never scales
    assert lr_at(0.0, cfg) == 0.0
    assert lr_at(1.0, cfg) == pytest.approx(peak / 2)  # linear warmup
    assert lr_at(2.0, cfg) == pytest.approx(peak)  # end of warmup = peak
    assert lr_at(6.0, cfg) == pytest.approx(1e-6 + (peak - 1e-6) * 0.5)  # half-way through the cosine
    assert lr_at(10.0, cfg) == pytest.approx(1e-6)
    assert lr_at(3.0, cfg) > lr_at(3.5, cfg) > lr_at(9.9, cfg)
    assert lr_at(2.0, TrainConfig(lr=0.3, warmup_epochs=2, epochs=10)) == pytest.approx(0.3)  # absolute lr wins


def test_weight_decay_exclusion():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    model.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
    model.frozen = nn.Parameter(torch.zeros(3, 3), requires_grad=False)
    groups = param_groups_weight_decay(model, 0.05)
    by_wd = {g["weight_decay"]: {id(p) for p in g["params"]} for g in groups}
    assert by_wd[0.05] == {id(model[0].weight), id(model.cls_token)}  # reference: only biases / 1-D excluded
    assert by_wd[0.0] == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}
    groups = param_groups_weight_decay(model, 0.05, skip=("cls_token",))
    assert {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]} >= {id(model.cls_token)}
    assert all(id(model.frozen) not in {id(p) for p in g["params"]} for g in groups)


def _scales(model: nn.Module, groups: list[dict]) -> dict[str, tuple[float, float]]:
    """parameter name -> (lr_scale, weight_decay) of its group (every parameter in exactly one group)."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {names[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert sum(len(g["params"]) for g in groups) == len(out)
    return out


@pytest.mark.parametrize("pool", ["avg", "token"])
def test_layer_decay_scales(pool):
    """The reference's rule: stem = layer 0, block i = layer i + 1, final norm / fc_norm / head = depth + 1, scale
    decay ** (depth + 1 - layer). With cls-token pooling the final `norm` trains at the full lr (timm's own
    grouping would put it with the last block, at `decay`)."""
    import timm

    depth, decay = 3, 0.5
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=32,
        patch_size=4,
        depth=depth,
        num_classes=5,
        global_pool=pool,
        pretrained=False,
    )
    groups = param_groups_layer_decay(vit, 0.05, decay, no_weight_decay_list=("cls_token", "pos_embed"))
    scale_of = _scales(vit, groups)
    assert scale_of["patch_embed.proj.weight"][0] == pytest.approx(decay ** (depth + 1))
    assert scale_of["cls_token"] == (pytest.approx(decay ** (depth + 1)), 0.0)
    for i in range(depth):
        assert scale_of[f"blocks.{i}.attn.qkv.weight"] == (pytest.approx(decay ** (depth - i)), 0.05)
        assert scale_of[f"blocks.{i}.norm1.weight"][1] == 0.0
    final_norm = "fc_norm" if pool == "avg" else "norm"
    assert scale_of[f"{final_norm}.weight"] == scale_of[f"{final_norm}.bias"] == (1.0, 0.0)
    assert scale_of["head.weight"] == (1.0, 0.05)
    assert scale_of["head.bias"][1] == 0.0
    # the scales reach the optimizer through set_lr
    opt = build_optimizer("adamw", groups, 1.0, TrainConfig())
    set_lr(opt, 2.0)
    assert sorted({round(g["lr"], 6) for g in opt.param_groups}) == [2.0 * decay**k for k in range(depth + 1, -1, -1)]
    # decay 1.0 (the from-scratch recipe): one lr, the same weight-decay split
    flat = _scales(vit, param_groups_layer_decay(vit, 0.05, 1.0))
    assert {s for s, _ in flat.values()} == {1.0}
    assert {n: wd for n, (_, wd) in flat.items()} == {n: wd for n, (_, wd) in scale_of.items()}


def test_layer_decay_skips_frozen_and_needs_blocks():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=2, num_classes=5, pretrained=False)
    vit.patch_embed.requires_grad_(False)
    scale_of = _scales(vit, param_groups_layer_decay(vit, 0.05, 0.5))
    assert not any(n.startswith("patch_embed") for n in scale_of) and "blocks.0.mlp.fc1.weight" in scale_of
    with pytest.raises(UserError, match="layer_decay: Linear has no Transformer 'blocks'"):
        param_groups_layer_decay(nn.Linear(2, 2), 0.05, 0.5)


def test_transfer_backbone_layer_decay():
    """Detection / segmentation: the ViT's final norm (used by forward_features) and the new network train at
    the full lr, the last block at `decay`, the stem at decay ** (depth + 1) (ViTDet's rule)."""
    from mae.models import create_encoder
    from mae.stages.backbone import layer_decay_groups

    vit = create_encoder("mae_vit_micro_patch4", num_classes=0, global_pool="token")
    neck = nn.Linear(128, 8)
    model = nn.ModuleDict({"vit": vit, "neck": neck})
    depth, decay = len(vit.blocks), 0.7
    scale_of = _scales(model, layer_decay_groups(model, vit, 0.1, decay))
    assert len(scale_of) == sum(1 for p in model.parameters() if p.requires_grad)
    assert scale_of["vit.norm.weight"] == (1.0, 0.0) and scale_of["neck.weight"] == (1.0, 0.1)
    assert scale_of["neck.bias"] == (1.0, 0.0)
    assert scale_of[f"vit.blocks.{depth - 1}.attn.proj.weight"] == (pytest.approx(decay), 0.1)
    assert scale_of["vit.patch_embed.proj.weight"][0] == pytest.approx(decay ** (depth + 1))


def test_build_optimizers():
    model = nn.Linear(3, 2)
    cfg = TrainConfig(betas=(0.9, 0.95), weight_decay=0.05)
    groups = param_groups_weight_decay(model, cfg.weight_decay)
    adamw = build_optimizer("adamw", groups, 0.1, cfg)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.9, 0.95)
    assert sorted(g["weight_decay"] for g in adamw.param_groups) == [0.0, 0.05]
    from timm.optim import Lars

    lars = build_optimizer("lars", param_groups_weight_decay(model, 0.0), 0.1, TrainConfig(weight_decay=0.0))
    assert isinstance(lars, Lars) and lars.defaults["momentum"] == 0.9
    model(torch.randn(4, 3)).sum().backward()
    lars.step()
    assert all(math.isfinite(v) for v in model.weight.flatten().tolist())
    with pytest.raises(UserError, match="unknown optimizer 'adam'"):
        build_optimizer("adam", groups, 0.1, cfg)
